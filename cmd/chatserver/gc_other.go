//go:build !linux

package main

// totalRAM is the machine's RAM in bytes: unknown (0) here, so no memory
// limit is set unless GOMEMLIMIT is.
func totalRAM() uint64 { return 0 }
