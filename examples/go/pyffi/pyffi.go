// Package pyffi is a small Go wrapper over the pyffi C ABI (include/pyffi.h):
// models and sessions are Go values with Close methods, failures are *Error
// values, and all buffers are Go slices that the engine fills during a call.
package pyffi

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../rust/target/release -lpyffi -Wl,-rpath,${SRCDIR}/../../../rust/target/release
#include <stdint.h>
#include <stdlib.h>
#include "pyffi.h"

// Defined in callback.go (//export).
extern bool pyffiGoOnToken(uintptr_t handle, int32_t token);

// The engine calls a C function pointer; this one forwards to Go. user_data
// is a cgo.Handle (an integer), never a Go pointer.
static bool pyffi_go_trampoline(void *user_data, int32_t token) {
	return pyffiGoOnToken((uintptr_t)user_data, token);
}

// pyffi_generate with the trampoline as callback; handle 0 (never a valid
// cgo.Handle) means no callback. Doing the integer-to-pointer cast here keeps
// unsafe uintptr conversions out of the Go code.
static pyffi_status pyffi_go_generate(pyffi_session *session, const int32_t *prompt, size_t n_prompt,
                                      const pyffi_sampling_params *params, size_t max_new_tokens,
                                      int32_t *out_tokens, size_t out_cap, size_t *n_out,
                                      pyffi_finish_reason *finish, uintptr_t handle, pyffi_error **err) {
	return pyffi_generate(session, prompt, n_prompt, params, max_new_tokens, out_tokens, out_cap, n_out,
	                      finish, handle ? pyffi_go_trampoline : NULL, (void *)handle, err);
}
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Status codes of pyffi_status (stable, never reused).
const (
	StatusOK              uint32 = C.PYFFI_OK
	StatusInvalidArgument uint32 = C.PYFFI_INVALID_ARGUMENT
	StatusNotFound        uint32 = C.PYFFI_NOT_FOUND
	StatusIO              uint32 = C.PYFFI_IO
	StatusInvalidConfig   uint32 = C.PYFFI_INVALID_CONFIG
	StatusInvalidWeights  uint32 = C.PYFFI_INVALID_WEIGHTS
	StatusBufferTooSmall  uint32 = C.PYFFI_BUFFER_TOO_SMALL
	StatusOutOfRange      uint32 = C.PYFFI_OUT_OF_RANGE
	StatusUnsupported     uint32 = C.PYFFI_UNSUPPORTED
	StatusPanic           uint32 = C.PYFFI_PANIC
)

// Error is a failed call: its status code, the code's name
// (e.g. "PYFFI_OUT_OF_RANGE") and the engine's message.
type Error struct {
	Status  uint32
	Name    string
	Message string
}

func (e *Error) Error() string { return e.Name + ": " + e.Message }

// statusError turns a call's status and error out-param into a Go error and
// frees the C error. Code and message come from this call's own pyffi_error,
// so concurrent calls on other goroutines cannot mix them up.
func statusError(status C.pyffi_status, e *C.pyffi_error) error {
	defer C.pyffi_error_free(e) // NULL is a no-op
	if status == C.PYFFI_OK {
		return nil
	}
	code := uint32(status)
	if e != nil {
		code = uint32(C.pyffi_error_code(e))
	}
	return &Error{Status: code, Name: statusName(code), Message: C.GoString(C.pyffi_error_message(e))}
}

// invalidArgument reports a bad argument caught on the Go side, before any C
// call, in the same form as the engine's own errors.
func invalidArgument(format string, args ...any) error {
	return &Error{Status: StatusInvalidArgument, Name: statusName(StatusInvalidArgument), Message: fmt.Sprintf(format, args...)}
}

func statusName(code uint32) string { return C.GoString(C.pyffi_status_name(C.uint32_t(code))) }

// toU32 checks that an int fits a C uint32_t, which would silently wrap otherwise.
func toU32(name string, v int) (C.uint32_t, error) {
	if v < 0 || uint64(v) > math.MaxUint32 {
		return 0, invalidArgument("%s must be in [0, %d], got %d", name, uint64(math.MaxUint32), v)
	}
	return C.uint32_t(v), nil
}

// toI32 is toU32 for C int32_t fields.
func toI32(name string, v int) (C.int32_t, error) {
	if v < math.MinInt32 || v > math.MaxInt32 {
		return 0, invalidArgument("%s must fit in int32, got %d", name, v)
	}
	return C.int32_t(v), nil
}

// cptr is a pointer to a slice's first element as C type E, or NULL for an
// empty slice. It is only for element types without Go pointers (numbers),
// which cgo lets C read and write for the duration of one call.
func cptr[E, T any](s []T) *E {
	if len(s) == 0 {
		return nil
	}
	return (*E)(unsafe.Pointer(&s[0]))
}

// ABIVersion is the ABI version of the loaded library (PYFFI_ABI_VERSION).
func ABIVersion() uint32 { return uint32(C.pyffi_abi_version()) }

// Version is the library version, e.g. "0.1.0".
func Version() string { return C.GoString(C.pyffi_version()) }

// SetThreads sets the worker threads of sessions created with nThreads 0;
// 0 (or less) means one per CPU.
func SetThreads(n int) {
	if n < 0 {
		n = 0
	}
	C.pyffi_set_threads(C.uint32_t(min(uint64(n), math.MaxUint32)))
}

// Threads is the current default number of worker threads.
func Threads() int { return int(C.pyffi_get_threads()) }

// Model is a loaded model. Sessions keep the weights alive on the C side, so
// closing a model while its sessions are open is safe.
type Model struct {
	ptr *C.pyffi_model
}

// LoadModel loads a Hugging Face model folder (config.json + safetensors).
func LoadModel(path string) (*Model, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.pyffi_model
	var e *C.pyffi_error
	if err := statusError(C.pyffi_model_load(cpath, &out, &e), e); err != nil {
		return nil, err
	}
	m := &Model{ptr: out}
	// A backstop for a forgotten Close; explicit Close frees memory sooner.
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close frees the model handle. Calling it again is a no-op; it must not run
// concurrently with other calls on the same model.
func (m *Model) Close() {
	if m.ptr == nil {
		return
	}
	runtime.SetFinalizer(m, nil)
	C.pyffi_model_free(m.ptr)
	m.ptr = nil
}

// VocabSize is the number of token ids (0 after Close).
func (m *Model) VocabSize() int {
	n := int(C.pyffi_model_vocab_size(m.ptr))
	runtime.KeepAlive(m) // the finalizer must not free ptr during the call
	return n
}

// Session runs forward passes and generation on a model with its own KV
// cache. The engine serializes calls on one session; use one session per
// goroutine to run in parallel.
type Session struct {
	ptr   *C.pyffi_session
	vocab int
}

// NewSession creates a session with a context of nCtx tokens and nThreads
// worker threads; 0 (or less) keeps the engine's default for either.
func (m *Model) NewSession(nCtx, nThreads int) (*Session, error) {
	params := C.pyffi_session_default_params() // sets params.size
	var err error
	if nCtx > 0 {
		if params.n_ctx, err = toU32("nCtx", nCtx); err != nil {
			return nil, err
		}
	}
	if nThreads > 0 {
		if params.n_threads, err = toU32("nThreads", nThreads); err != nil {
			return nil, err
		}
	}
	var out *C.pyffi_session
	var e *C.pyffi_error
	status := C.pyffi_session_new(m.ptr, &params, &out, &e)
	runtime.KeepAlive(m)
	if err := statusError(status, e); err != nil {
		return nil, err
	}
	s := &Session{ptr: out, vocab: m.VocabSize()}
	runtime.SetFinalizer(s, (*Session).Close)
	return s, nil
}

// Close frees the session. Calling it again is a no-op; it must not run
// concurrently with other calls on the same session.
func (s *Session) Close() {
	if s.ptr == nil {
		return
	}
	runtime.SetFinalizer(s, nil)
	C.pyffi_session_free(s.ptr)
	s.ptr = nil
}

// Forward runs a ragged batch: row i of seqs continues KV slot i from
// position startPos[i] (nil: every row starts fresh at 0). It returns float32
// logits laid out [len(seqs)][vocab] when lastOnly, else
// [len(seqs)][max row length][vocab] with zeros after shorter rows.
func (s *Session) Forward(seqs [][]int32, startPos []uint32, lastOnly bool) ([]float32, error) {
	// C reads len(seqs) entries of start_pos: a shorter slice would be read
	// past its end.
	if startPos != nil && len(startPos) != len(seqs) {
		return nil, invalidArgument("startPos has %d entries for %d sequences", len(startPos), len(seqs))
	}
	// The ABI takes the rows back to back plus their lengths.
	lengths := make([]C.uint32_t, len(seqs))
	total, maxLen := 0, 0
	for i, seq := range seqs {
		n, err := toU32(fmt.Sprintf("length of sequence %d", i), len(seq))
		if err != nil {
			return nil, err
		}
		lengths[i] = n
		total += len(seq)
		maxLen = max(maxLen, len(seq))
	}
	flat := make([]int32, 0, total)
	for _, seq := range seqs {
		flat = append(flat, seq...)
	}
	n := len(seqs) * s.vocab
	if !lastOnly {
		n *= maxLen
	}
	// Go memory without Go pointers, filled by the engine during the call.
	logits := make([]float32, n)
	var written C.size_t
	var e *C.pyffi_error
	status := C.pyffi_forward(s.ptr, cptr[C.int32_t](flat), cptr[C.uint32_t](lengths), C.size_t(len(seqs)),
		cptr[C.uint32_t](startPos), C.bool(lastOnly), cptr[C.float](logits), C.size_t(n), &written, &e)
	runtime.KeepAlive(s)
	if err := statusError(status, e); err != nil {
		return nil, err
	}
	return logits[:min(int(written), n)], nil
}

// SamplingParams configures Generate; start from DefaultSamplingParams.
type SamplingParams struct {
	Temperature   float32 // 0 = greedy
	TopK          int     // 0 = off
	TopP          float32 // 1 = off
	MinP          float32 // 0 = off
	RepeatPenalty float32 // 1 = off
	RepeatLastN   int     // window of the penalty, prompt included; -1 = all, 0 = off
	Seed          uint64  // same seed, same tokens; SeedRandom picks one
	StopTokens    []int32 // extra ids that end generation (not returned)
	StopAtEOS     bool    // also stop at the model's EOS ids
}

// SeedRandom asks for a fresh random seed on each call.
const SeedRandom uint64 = math.MaxUint64

// DefaultSamplingParams are the engine's defaults.
func DefaultSamplingParams() SamplingParams {
	c := C.pyffi_sampling_default_params()
	return SamplingParams{
		Temperature:   float32(c.temperature),
		TopK:          int(c.top_k),
		TopP:          float32(c.top_p),
		MinP:          float32(c.min_p),
		RepeatPenalty: float32(c.repeat_penalty),
		RepeatLastN:   int(c.repeat_last_n),
		Seed:          uint64(c.seed),
		StopAtEOS:     bool(c.stop_at_eos),
	}
}

// toC builds the C struct and a function that frees what it allocated.
// StopTokens is copied into C memory: the struct itself is passed to C, and
// cgo forbids Go pointers stored inside memory handed to C.
func (p SamplingParams) toC() (C.pyffi_sampling_params, func(), error) {
	c := C.pyffi_sampling_default_params() // sets c.size
	var err error
	if c.top_k, err = toI32("TopK", p.TopK); err != nil {
		return c, nil, err
	}
	if c.repeat_last_n, err = toI32("RepeatLastN", p.RepeatLastN); err != nil {
		return c, nil, err
	}
	c.temperature = C.float(p.Temperature)
	c.top_p = C.float(p.TopP)
	c.min_p = C.float(p.MinP)
	c.repeat_penalty = C.float(p.RepeatPenalty)
	c.seed = C.uint64_t(p.Seed)
	c.stop_at_eos = C.bool(p.StopAtEOS)
	if len(p.StopTokens) == 0 {
		return c, func() {}, nil
	}
	mem := C.malloc(C.size_t(len(p.StopTokens)) * C.size_t(unsafe.Sizeof(C.int32_t(0))))
	copy(unsafe.Slice((*int32)(mem), len(p.StopTokens)), p.StopTokens)
	c.stop_tokens = (*C.int32_t)(mem)
	c.n_stop_tokens = C.size_t(len(p.StopTokens))
	return c, func() { C.free(mem) }, nil
}

// FinishReason says why Generate ended.
type FinishReason uint32

const (
	FinishStop      FinishReason = C.PYFFI_FINISH_STOP      // a stop or EOS token
	FinishLength    FinishReason = C.PYFFI_FINISH_LENGTH    // maxNew reached or the context is full
	FinishCancelled FinishReason = C.PYFFI_FINISH_CANCELLED // onToken returned false
)

func (f FinishReason) String() string {
	switch f {
	case FinishStop:
		return "stop"
	case FinishLength:
		return "length"
	case FinishCancelled:
		return "cancelled"
	}
	return fmt.Sprintf("FinishReason(%d)", uint32(f))
}

// Generate samples up to maxNew tokens after prompt, starting fresh in KV
// slot 0. onToken (may be nil) sees each new token as it is made; returning
// false stops generation with FinishCancelled. A panic in onToken stops
// generation and is re-raised here.
func (s *Session) Generate(prompt []int32, maxNew int, p SamplingParams, onToken func(int32) bool) ([]int32, FinishReason, error) {
	if maxNew < 0 {
		return nil, 0, invalidArgument("maxNew must be >= 0, got %d", maxNew)
	}
	cp, free, err := p.toC()
	if err != nil {
		return nil, 0, err
	}
	defer free()
	// The closure cannot go through C as a pointer; a handle (an integer)
	// can, and the exported callback looks it up again.
	var handle C.uintptr_t
	var state *generateState
	if onToken != nil {
		state = &generateState{onToken: onToken}
		h := cgo.NewHandle(state)
		defer h.Delete()
		handle = C.uintptr_t(h)
	}
	out := make([]int32, maxNew) // filled by the engine during the call
	var nOut C.size_t
	var finish C.pyffi_finish_reason
	var e *C.pyffi_error
	status := C.pyffi_go_generate(s.ptr, cptr[C.int32_t](prompt), C.size_t(len(prompt)), &cp, C.size_t(maxNew),
		cptr[C.int32_t](out), C.size_t(maxNew), &nOut, &finish, handle, &e)
	runtime.KeepAlive(s)
	if state != nil && state.panic != nil {
		C.pyffi_error_free(e)
		panic(state.panic)
	}
	if err := statusError(status, e); err != nil {
		return nil, 0, err
	}
	return out[:nOut], FinishReason(finish), nil
}

// Generation is a generation in progress, one token per Next call on the
// calling goroutine (no callback): Go's natural streaming loop. Close it
// when done; stopping early costs no further forward pass.
type Generation struct {
	ptr    *C.pyffi_generation
	finish FinishReason
}

// Start prefills prompt (KV slot 0, starting fresh) and returns a
// generation of at most maxNew tokens. Any other call on the session between
// two Next calls ends the generation with an error at the next one.
func (s *Session) Start(prompt []int32, maxNew int, p SamplingParams) (*Generation, error) {
	if maxNew < 0 {
		return nil, invalidArgument("maxNew must be >= 0, got %d", maxNew)
	}
	cp, free, err := p.toC()
	if err != nil {
		return nil, err
	}
	defer free() // the engine copies the prompt and the stop tokens
	var out *C.pyffi_generation
	var e *C.pyffi_error
	status := C.pyffi_generation_new(s.ptr, cptr[C.int32_t](prompt), C.size_t(len(prompt)), &cp,
		C.size_t(maxNew), &out, &e)
	runtime.KeepAlive(s)
	if err := statusError(status, e); err != nil {
		return nil, err
	}
	g := &Generation{ptr: out}
	runtime.SetFinalizer(g, (*Generation).Close)
	return g, nil
}

// Next returns the next token and true, or false once the generation has
// ended (Finish then says why). An error ends the generation.
func (g *Generation) Next() (int32, bool, error) {
	if g.ptr == nil {
		return 0, false, invalidArgument("the generation is closed")
	}
	var tok C.int32_t
	var finish C.pyffi_finish_reason
	var e *C.pyffi_error
	status := C.pyffi_generation_next(g.ptr, &tok, &finish, &e)
	runtime.KeepAlive(g)
	if err := statusError(status, e); err != nil {
		g.finish = FinishCancelled
		return 0, false, err
	}
	if tok == C.PYFFI_TOKEN_NONE {
		g.finish = FinishReason(finish)
		return 0, false, nil
	}
	return int32(tok), true, nil
}

// Finish says why the generation ended, once Next has returned false.
func (g *Generation) Finish() FinishReason { return g.finish }

// Close frees the generation (stopping it where it is). Calling it again is
// a no-op.
func (g *Generation) Close() {
	if g.ptr == nil {
		return
	}
	runtime.SetFinalizer(g, nil)
	C.pyffi_generation_free(g.ptr)
	g.ptr = nil
}
