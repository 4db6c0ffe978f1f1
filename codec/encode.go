package codec

import (
	"encoding/binary"
	"strconv"
	"unicode/utf8"
)

// The two messages a node sends for every chat message, the ACK and the
// delivery, are encoded here without reflection; Marshal uses these and
// falls back to encoding/json for everything else. The output is byte for
// byte what encoding/json writes for the same value with HTML escaping off
// (field order, omitempty, invalid UTF-8 as \ufffd; <, > and & as they
// are): a client cannot tell which encoder ran, and FuzzEncodeMatchesJSON
// checks it against encoding/json as Go builds it by default (not the
// jsonv2 experiment's emulation). encoding/json took ~5 % of a node's CPU flat out
// (docs/BENCHMARKS-history.md, "Changes in session 7").

// appendAckFrame appends a's frame, and reports false (appending nothing)
// if a's reqid is not a plain integer, which only encoding/json may
// normalise.
func appendAckFrame(dst []byte, a *Ack) ([]byte, bool) {
	if !plainInt(a.ReqID) {
		return dst, false
	}
	dst, start := openFrame(dst)
	dst = intField(dst, `{"msgid":`, int64(a.MsgID))
	if len(a.ReqID) > 0 {
		dst = append(append(dst, `,"reqid":`...), a.ReqID...)
	}
	dst = intField(dst, `,"ack":`, int64(a.Ack))
	dst = intField(dst, `,"errno":`, int64(a.Errno))
	dst = strField(dst, `,"errmsg":`, a.ErrMsg)
	if a.GroupID != 0 {
		dst = intField(dst, `,"groupid":`, int64(a.GroupID))
	}
	if a.Time != "" {
		dst = strField(dst, `,"time":`, a.Time)
	}
	if a.GSeq != 0 {
		dst = intField(dst, `,"gseq":`, int64(a.GSeq))
	}
	return closeFrame(dst, start), true
}

// appendDeliveryFrame appends d's frame.
func appendDeliveryFrame(dst []byte, d *Delivery) []byte {
	dst, start := openFrame(dst)
	dst = intField(dst, `{"msgid":`, int64(d.MsgID))
	dst = intField(dst, `,"id":`, int64(d.ID))
	dst = strField(dst, `,"name":`, d.Name)
	if d.ToID != 0 {
		dst = intField(dst, `,"toid":`, int64(d.ToID))
	}
	if d.GroupID != 0 {
		dst = intField(dst, `,"groupid":`, int64(d.GroupID))
	}
	dst = strField(dst, `,"msg":`, d.Msg)
	dst = strField(dst, `,"time":`, d.Time)
	if d.Seq != 0 {
		dst = intField(dst, `,"seq":`, int64(d.Seq))
	}
	if d.GSeq != 0 {
		dst = intField(dst, `,"gseq":`, int64(d.GSeq))
	}
	return closeFrame(dst, start)
}

// DeliveryLen returns the length of d's JSON object as Marshal and
// AppendFrameOf write it (the frame without its length prefix), and as it
// appears inside LOGIN_ACK's offlineMsg, without encoding it: escapes
// counted (a control character is 6 bytes), as JSONStringLen counts them.
func DeliveryLen(d *Delivery) int {
	n := len(`{"msgid":`) + intLen(int64(d.MsgID)) +
		len(`,"id":`) + intLen(int64(d.ID)) +
		len(`,"name":`) + JSONStringLen(d.Name) +
		len(`,"msg":`) + JSONStringLen(d.Msg) +
		len(`,"time":`) + JSONStringLen(d.Time) + len(`}`)
	if d.ToID != 0 {
		n += len(`,"toid":`) + intLen(int64(d.ToID))
	}
	if d.GroupID != 0 {
		n += len(`,"groupid":`) + intLen(int64(d.GroupID))
	}
	if d.Seq != 0 {
		n += len(`,"seq":`) + intLen(int64(d.Seq))
	}
	if d.GSeq != 0 {
		n += len(`,"gseq":`) + intLen(int64(d.GSeq))
	}
	return n
}

// intLen is the number of bytes of v in decimal.
func intLen(v int64) int {
	n := 1
	u := uint64(v)
	if v < 0 {
		n, u = 2, uint64(-v) // -(1<<63) stays 1<<63 as a uint64
	}
	for ; u >= 10; u /= 10 {
		n++
	}
	return n
}

// JSONStringLen returns the length of s as a JSON string, quotes included,
// as Marshal writes it (appendJSONString): up to 6 times len(s)+2.
func JSONStringLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			switch {
			case b >= 0x20 && b != '"' && b != '\\':
				n++
			case b == '\\', b == '"', b == '\b', b == '\f', b == '\n', b == '\r', b == '\t':
				n += 2
			default:
				n += 6
			}
			i++
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1, c == '\u2028', c == '\u2029':
			n += 6
		default:
			n += size
		}
		i += size
	}
	return n
}

// openFrame appends room for a frame's length prefix and returns where the
// frame starts; closeFrame ends the JSON object and fills in the length.
func openFrame(dst []byte) ([]byte, int) { return append(dst, 0, 0, 0, 0), len(dst) }

func closeFrame(dst []byte, start int) []byte {
	dst = append(dst, '}')
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-HeaderLen))
	return dst
}

// intField appends key (with its punctuation, e.g. `,"seq":`) and v;
// strField appends key and s as a JSON string.
func intField(dst []byte, key string, v int64) []byte {
	return strconv.AppendInt(append(dst, key...), v, 10)
}

func strField(dst []byte, key, s string) []byte { return appendJSONString(append(dst, key...), s) }

// ackSize and deliverySize are the frame sizes to allocate for a and d:
// room for the field names and typical numbers; strings that need escapes
// or very long numbers grow the frame once more.
func ackSize(a *Ack) int { return HeaderLen + 140 + len(a.ReqID) + len(a.ErrMsg) + len(a.Time) }

func deliverySize(d *Delivery) int {
	return HeaderLen + 160 + len(d.Name) + len(d.Msg) + len(d.Time)
}

// plainInt reports whether raw is empty or a JSON integer: digits without
// a leading zero (0 itself aside), optionally after a minus. encoding/json
// copies such a reqid as it is; anything else goes through it.
func plainInt(raw []byte) bool {
	if len(raw) == 0 {
		return true
	}
	if raw[0] == '-' {
		raw = raw[1:]
	}
	if len(raw) == 0 || len(raw) > 1 && raw[0] == '0' {
		return false
	}
	for _, c := range raw {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json does
// with HTML escaping off: ", \ and control characters escaped, U+2028 and
// U+2029 as \u2028 and \u2029, and each byte of invalid UTF-8 as \ufffd.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
