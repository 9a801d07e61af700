package pyffi

/*
#include <stdlib.h>
#include "pyffi.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Tokenizer turns text into token ids and back. Load it from a
// tokenizer.json, a tokenizer.model, a .gguf file or a model folder.
type Tokenizer struct {
	ptr *C.pyffi_tokenizer
}

// LoadTokenizer loads a tokenizer; a missing path is StatusNotFound.
func LoadTokenizer(path string) (*Tokenizer, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var out *C.pyffi_tokenizer
	var e *C.pyffi_error
	if err := statusError(C.pyffi_tokenizer_load(cpath, &out, &e), e); err != nil {
		return nil, err
	}
	t := &Tokenizer{ptr: out}
	runtime.SetFinalizer(t, (*Tokenizer).Close)
	return t, nil
}

// Close frees the tokenizer. Calling it again is a no-op.
func (t *Tokenizer) Close() {
	if t.ptr == nil {
		return
	}
	runtime.SetFinalizer(t, nil)
	C.pyffi_tokenizer_free(t.ptr)
	t.ptr = nil
}

// Encode returns the token ids of text (which may contain NUL bytes).
// parseSpecial turns special-token text such as "<s>" into that token.
func (t *Tokenizer) Encode(text string, addBOS, parseSpecial bool) ([]int32, error) {
	data := []byte(text)
	ids := make([]int32, len(data)+8)
	for {
		var n C.size_t
		var e *C.pyffi_error
		status := C.pyffi_tokenizer_encode(t.ptr, cptr[C.char](data), C.size_t(len(data)), C.bool(addBOS), C.bool(false),
			C.bool(parseSpecial), cptr[C.int32_t](ids), C.size_t(len(ids)), &n, &e)
		runtime.KeepAlive(t)
		if status == C.PYFFI_BUFFER_TOO_SMALL && int(n) > len(ids) {
			C.pyffi_error_free(e)
			ids = make([]int32, int(n))
			continue
		}
		if err := statusError(status, e); err != nil {
			return nil, err
		}
		return ids[:int(n)], nil
	}
}

// readText calls a text-returning function under the library's buffer rule
// (the length out-param gets the bytes needed, NUL included) and retries once
// with the size it asked for.
func readText(call func(buf *C.char, cap C.size_t, n *C.size_t, e **C.pyffi_error) C.pyffi_status) (string, error) {
	buf := make([]byte, 256)
	for {
		var n C.size_t
		var e *C.pyffi_error
		status := call(cptr[C.char](buf), C.size_t(len(buf)), &n, &e)
		if status == C.PYFFI_BUFFER_TOO_SMALL && int(n) > len(buf) {
			C.pyffi_error_free(e)
			buf = make([]byte, int(n))
			continue
		}
		if err := statusError(status, e); err != nil {
			return "", err
		}
		return string(buf[:int(n)-1]), nil
	}
}

// Decode returns the text of ids.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) (string, error) {
	s, err := readText(func(buf *C.char, cap C.size_t, n *C.size_t, e **C.pyffi_error) C.pyffi_status {
		return C.pyffi_tokenizer_decode(t.ptr, cptr[C.int32_t](ids), C.size_t(len(ids)), C.bool(skipSpecial), buf, cap, n, e)
	})
	runtime.KeepAlive(t)
	return s, err
}

// Detokenizer turns a stream of token ids into text, holding back a
// character split across tokens until it is complete.
type Detokenizer struct {
	ptr *C.pyffi_detokenizer
	tok *Tokenizer
}

// NewDetokenizer starts a stream over this tokenizer.
func (t *Tokenizer) NewDetokenizer(skipSpecial bool) (*Detokenizer, error) {
	var out *C.pyffi_detokenizer
	var e *C.pyffi_error
	err := statusError(C.pyffi_detokenizer_new(t.ptr, C.bool(skipSpecial), &out, &e), e)
	runtime.KeepAlive(t)
	if err != nil {
		return nil, err
	}
	d := &Detokenizer{ptr: out, tok: t}
	runtime.SetFinalizer(d, (*Detokenizer).Close)
	return d, nil
}

// Feed adds one token and returns the text it completes (maybe "").
// A too-small buffer does not consume the token, so readText's retry is safe.
func (d *Detokenizer) Feed(id int32) (string, error) {
	s, err := readText(func(buf *C.char, cap C.size_t, n *C.size_t, e **C.pyffi_error) C.pyffi_status {
		return C.pyffi_detokenizer_feed(d.ptr, C.int32_t(id), buf, cap, n, e)
	})
	runtime.KeepAlive(d)
	return s, err
}

// Flush returns whatever text is still held back.
func (d *Detokenizer) Flush() (string, error) {
	s, err := readText(func(buf *C.char, cap C.size_t, n *C.size_t, e **C.pyffi_error) C.pyffi_status {
		return C.pyffi_detokenizer_flush(d.ptr, buf, cap, n, e)
	})
	runtime.KeepAlive(d)
	return s, err
}

// Close frees the detokenizer. Calling it again is a no-op.
func (d *Detokenizer) Close() {
	if d.ptr == nil {
		return
	}
	runtime.SetFinalizer(d, nil)
	C.pyffi_detokenizer_free(d.ptr)
	d.ptr = nil
}
