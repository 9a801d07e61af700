package pyffi

// The exported callback lives in its own file: cgo forbids C definitions in
// the preamble of a file that uses //export, and the trampoline in pyffi.go
// is one.

/*
#include <stdbool.h>
#include <stdint.h>
*/
import "C"

import "runtime/cgo"

// generateState is what the cgo.Handle passed as user_data points to.
type generateState struct {
	onToken func(int32) bool
	panic   any // a panic from onToken, re-raised once the C call returns
}

// pyffiGoOnToken is called by the engine (through the C trampoline) after
// each new token. user_data carries a cgo.Handle as an integer, so no Go
// pointer ever goes through C.
//
//export pyffiGoOnToken
func pyffiGoOnToken(handle C.uintptr_t, token C.int32_t) (keepGoing C.bool) {
	st := cgo.Handle(handle).Value().(*generateState)
	// A Go panic must not unwind through the Rust frames below us: catch it,
	// stop generation, and let Generate re-panic on the Go side.
	defer func() {
		if r := recover(); r != nil {
			st.panic = r
			keepGoing = false
		}
	}()
	return C.bool(st.onToken(int32(token)))
}
