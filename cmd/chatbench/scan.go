package main

import (
	"encoding/json"
	"errors"
)

// frame is what chatbench needs from one server message. scanFrame fills it
// without reflection: encoding/json on every delivery and ACK would cost the
// benchmark more CPU than the server it shares two cores with. Byte slices
// alias the read buffer and are only valid until the next read.
type frame struct {
	MsgID   int64
	ReqID   int64
	HasReq  bool
	Errno   int64
	Ack     int64
	Seq     int64 // inbox position (one-to-one deliveries)
	GSeq    int64 // group log position (group deliveries, GROUP_CHAT ACKs)
	ID      int64
	ToID    int64
	GroupID int64
	Msg     []byte // raw JSON string contents (escapes kept)
	Token   []byte
	Node    []byte // LOGIN_ACK: the node the session is on
	ErrMsg  []byte
	Offline []byte // raw JSON array of offlineMsg, nil or "[]" when none
	msgEsc  bool   // Msg holds backslash escapes
}

var errScan = errors.New("chatbench: malformed frame from server")

// scanFrame parses the top-level members of a JSON object. Nested values are
// skipped except offlineMsg, which is kept raw.
func scanFrame(b []byte, f *frame) error {
	*f = frame{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return errScan
	}
	i++
	for {
		i = skipWS(b, i)
		if i >= len(b) {
			return errScan
		}
		if b[i] == '}' {
			return nil
		}
		if b[i] == ',' {
			i = skipWS(b, i+1)
		}
		if i >= len(b) || b[i] != '"' {
			return errScan
		}
		ks, ke, _, ok := scanString(b, i)
		if !ok {
			return errScan
		}
		key := b[ks:ke]
		i = skipWS(b, ke+1)
		if i >= len(b) || b[i] != ':' {
			return errScan
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return errScan
		}
		switch c := b[i]; {
		case c == '"':
			vs, ve, esc, ok := scanString(b, i)
			if !ok {
				return errScan
			}
			switch string(key) {
			case "msg":
				f.Msg, f.msgEsc = b[vs:ve], esc
			case "token":
				f.Token = b[vs:ve]
			case "node":
				f.Node = b[vs:ve]
			case "errmsg":
				f.ErrMsg = b[vs:ve]
			case "reqid":
				f.HasReq = true // not one of ours (ours are numbers)
				f.ReqID = -1
			}
			i = ve + 1
		case c == '-' || (c >= '0' && c <= '9'):
			v, end, ok := scanInt(b, i)
			if !ok {
				return errScan
			}
			switch string(key) {
			case "msgid":
				f.MsgID = v
			case "reqid":
				f.ReqID, f.HasReq = v, true
			case "errno":
				f.Errno = v
			case "ack":
				f.Ack = v
			case "seq":
				f.Seq = v
			case "gseq":
				f.GSeq = v
			case "id":
				f.ID = v
			case "toid":
				f.ToID = v
			case "groupid":
				f.GroupID = v
			}
			i = end
		case c == '{' || c == '[':
			end, ok := skipNested(b, i)
			if !ok {
				return errScan
			}
			if string(key) == "offlineMsg" {
				f.Offline = b[i:end]
			}
			i = end
		default: // true, false, null
			j := i
			for j < len(b) && b[j] >= 'a' && b[j] <= 'z' {
				j++
			}
			if j == i {
				return errScan
			}
			i = j
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString scans the string starting at the quote b[i]; it returns the
// contents' bounds [s, e) (b[e] is the closing quote) and whether it holds
// escapes.
func scanString(b []byte, i int) (s, e int, esc, ok bool) {
	s = i + 1
	for j := s; j < len(b); j++ {
		switch b[j] {
		case '\\':
			esc = true
			j++
		case '"':
			return s, j, esc, true
		}
	}
	return 0, 0, false, false
}

// scanInt parses an integer; a fraction or exponent is rejected.
func scanInt(b []byte, i int) (v int64, end int, ok bool) {
	neg := false
	if b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	if i == start || i-start > 18 {
		return 0, 0, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, 0, false
	}
	if neg {
		v = -v
	}
	return v, i, true
}

// skipNested skips the object or array starting at b[i].
func skipNested(b []byte, i int) (int, bool) {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			_, e, _, ok := scanString(b, i)
			if !ok {
				return 0, false
			}
			i = e
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return i + 1, true
			}
		}
	}
	return 0, false
}

// msgText returns the message text, unescaped when needed.
func (f *frame) msgText() []byte {
	if !f.msgEsc {
		return f.Msg
	}
	var s string
	q := make([]byte, 0, len(f.Msg)+2)
	q = append(append(append(q, '"'), f.Msg...), '"')
	if json.Unmarshal(q, &s) != nil {
		return f.Msg
	}
	return []byte(s)
}

// offlineDelivery is one entry of LOGIN_ACK.offlineMsg: inbox entries
// (seq); groupid and gseq are read too in case a group log entry is ever
// carried there.
type offlineDelivery struct {
	MsgID   int64  `json:"msgid"`
	Seq     int64  `json:"seq"`
	GroupID int64  `json:"groupid"`
	GSeq    int64  `json:"gseq"`
	Msg     string `json:"msg"`
}

func (f *frame) offline() []offlineDelivery {
	if len(f.Offline) <= 2 {
		return nil
	}
	var ds []offlineDelivery
	_ = json.Unmarshal(f.Offline, &ds)
	return ds
}
