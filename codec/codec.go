// Package codec defines chatcluster's wire protocol: the 4-byte big-endian
// length-prefixed frame, the JSON message numbers and field names, typed ids
// and error codes. It has no state; every function is safe to call
// concurrently.
package codec

import (
	"encoding/binary"
	"errors"
)

// HeaderLen is the size of the frame length prefix.
const HeaderLen = 4

// DefaultMaxFrame is the default largest accepted frame body, in bytes.
const DefaultMaxFrame = 65536

// Framing errors. Decode returns exactly one of these, or nil.
var (
	// ErrIncomplete means the buffer does not yet hold a whole frame; read more.
	ErrIncomplete = errors.New("codec: incomplete frame")
	// ErrFrameTooLarge means the length prefix exceeds the configured maximum.
	ErrFrameTooLarge = errors.New("codec: frame too large")
	// ErrEmptyFrame means the length prefix is zero.
	ErrEmptyFrame = errors.New("codec: empty frame")
)

// Decode looks for one frame at the start of buf. It returns the frame body
// (aliasing buf) and the number of bytes the whole frame occupies. When buf
// holds less than a whole frame it returns ErrIncomplete; a length of zero or
// above maxFrame is reported as soon as the header is complete.
func Decode(buf []byte, maxFrame int) (body []byte, n int, err error) {
	if len(buf) < HeaderLen {
		return nil, 0, ErrIncomplete
	}
	size := binary.BigEndian.Uint32(buf)
	switch {
	case size == 0:
		return nil, 0, ErrEmptyFrame
	case uint64(size) > uint64(maxFrame):
		return nil, 0, ErrFrameTooLarge
	}
	total := HeaderLen + int(size)
	if len(buf) < total {
		return nil, 0, ErrIncomplete
	}
	return buf[HeaderLen:total], total, nil
}

// FrameLen reads the length prefix at the start of hdr, which must hold at
// least HeaderLen bytes.
func FrameLen(hdr []byte) int { return int(binary.BigEndian.Uint32(hdr)) }

// AppendFrame appends body to dst as one frame.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}
