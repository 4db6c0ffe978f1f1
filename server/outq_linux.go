package server

import "golang.org/x/sys/unix"

// kernelUnsent returns the bytes in socket fd's send queue that the peer
// has not acknowledged yet (SIOCOUTQ), or 0 when it cannot be read.
func kernelUnsent(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0
	}
	return n
}
