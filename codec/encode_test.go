package codec

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// viaJSON is the frame encoding/json gives v with HTML escaping off: what
// Marshal must match.
func viaJSON(t testing.TB, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return AppendFrame(nil, bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

// checkSame checks that Marshal gives what encoding/json gives for v, or
// fails where it fails (a reqid that is not JSON).
func checkSame(t testing.TB, v any) {
	t.Helper()
	got, err := Marshal(v)
	if _, jerr := json.Marshal(v); jerr != nil {
		if err == nil {
			t.Fatalf("Marshal(%#v) = %q, encoding/json fails: %v", v, got, jerr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if want := viaJSON(t, v); !bytes.Equal(got, want) {
		t.Fatalf("Marshal(%#v)\n got %q\nwant %q", v, got, want)
	}
}

var awkward = []string{
	"", "ok", "plain text", `quote " and \ backslash`, "<b>&amp;</b>", "tab\tnew\nline\rcr\bbs\fff",
	"\x00\x01\x1f\x7f", "héllo wörld 你好 🙂", "line\u2028sep\u2029para", "bad \xff\xfe utf8 \xc3", "\xed\xa0\x80 surrogate",
}

func TestEncodeMatchesJSON(t *testing.T) {
	for _, s := range awkward {
		for _, reqid := range []string{"", "1", "-7", "123456789012", "0", `"abc"`, "007", "1e3", "1.5", `"<&>"`} {
			a := &Ack{MsgID: MsgAck, ReqID: json.RawMessage(reqid), Ack: MsgOneChat, Errno: ErrnoUnavailable, ErrMsg: s, GroupID: 7, Time: s, GSeq: 9}
			checkSame(t, a)
			checkSame(t, *a)
			checkSame(t, &Ack{MsgID: MsgAck, ReqID: json.RawMessage(reqid), ErrMsg: s})
		}
		for _, d := range []Delivery{
			{MsgID: MsgOneChat, ID: 3, Name: s, ToID: 4, Msg: s, Time: "2026-11-26 07:00:00", Seq: 12},
			{MsgID: MsgGroupChat, ID: -3, Name: "n", GroupID: 5, Msg: s, Time: s, GSeq: 1 << 40},
			{},
		} {
			checkSame(t, &d)
			checkSame(t, d)
			// A delivery's frame inside a batch, and its cached frame.
			out := AppendFrameOf([]byte("prefix"), &d)
			if !bytes.Equal(out, append([]byte("prefix"), viaJSON(t, &d)...)) {
				t.Fatalf("AppendFrameOf(%#v) = %q", d, out)
			}
			d.Encode()
			if got := AppendFrameOf(nil, &d); !bytes.Equal(got, viaJSON(t, &d)) {
				t.Fatalf("encoded %#v: %q", d, got)
			}
		}
	}
}

// A reqid comes back byte for byte, and strings are not HTML-escaped.
func TestMarshalKeepsReqIDBytes(t *testing.T) {
	for _, reqid := range []string{`"a<b&c>d"`, "\"line\u2028sep\"", `"\u003c"`, "1.50", "-0"} {
		for _, v := range []any{
			&Pong{MsgID: MsgPong, ReqID: json.RawMessage(reqid)},
			&Ack{MsgID: MsgAck, ReqID: json.RawMessage(reqid), Ack: MsgOneChat, ErrMsg: "<ok>"},
		} {
			b, err := Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(b, []byte(`"reqid":`+reqid)) {
				t.Errorf("reqid %s: %q", reqid, b)
			}
			if bytes.Contains(b, []byte(`\u003c`)) && reqid != `"\u003c"` {
				t.Errorf("HTML-escaped: %q", b)
			}
		}
	}
}

func TestPlainInt(t *testing.T) {
	for raw, want := range map[string]bool{
		"": true, "0": true, "7": true, "-7": true, "-0": true, "1234567890123": true,
		"-": false, "007": false, "-01": false, "1e3": false, "1.5": false, `"7"`: false, "null": false, " 7": false,
	} {
		if got := plainInt([]byte(raw)); got != want {
			t.Errorf("plainInt(%q) = %v, want %v", raw, got, want)
		}
	}
}

// The fast path is the one taken: a single allocation, the frame, where
// encoding/json makes several.
func TestMarshalFastPath(t *testing.T) {
	a := &Ack{MsgID: MsgAck, ReqID: json.RawMessage("42"), Ack: MsgOneChat, ErrMsg: "ok", Time: "2026-11-26 07:00:00"}
	d := &Delivery{MsgID: MsgOneChat, ID: 1, Name: "alice", ToID: 2, Msg: "hello", Time: "2026-11-26 07:00:00", Seq: 3}
	for name, v := range map[string]any{"ack": a, "delivery": d} {
		if n := testing.AllocsPerRun(100, func() { _, _ = Marshal(v) }); n != 1 {
			t.Errorf("%s: %v allocations, want 1", name, n)
		}
	}
	var nilAck *Ack
	var nilDelivery *Delivery
	checkSame(t, nilAck)
	checkSame(t, nilDelivery)
}

func FuzzEncodeMatchesJSON(f *testing.F) {
	for _, s := range awkward {
		f.Add(s, s, "12", int64(5), int64(-1))
	}
	f.Fuzz(func(t *testing.T, a, b, reqid string, n, m int64) {
		checkSame(t, &Ack{MsgID: MsgID(n), ReqID: json.RawMessage(reqid), Ack: MsgID(m), Errno: Errno(n), ErrMsg: a,
			GroupID: GroupID(m), Time: b, GSeq: Seq(n)})
		checkSame(t, &Delivery{MsgID: MsgID(m), ID: UserID(n), Name: a, ToID: UserID(m), GroupID: GroupID(n), Msg: b,
			Time: a, Seq: Seq(m), GSeq: Seq(n)})
	})
}

// checkLen checks DeliveryLen and JSONStringLen against the encoders.
func checkLen(t testing.TB, d *Delivery) {
	t.Helper()
	if got, want := DeliveryLen(d), len(jsonBody(t, d)); got != want {
		t.Fatalf("DeliveryLen(%#v) = %d, encoded %d", d, got, want)
	}
	if got, want := JSONStringLen(d.Msg), len(appendJSONString(nil, d.Msg)); got != want {
		t.Fatalf("JSONStringLen(%q) = %d, encoded %d", d.Msg, got, want)
	}
}

// jsonBody is d's JSON object as encoding/json writes it.
func jsonBody(t testing.TB, d *Delivery) []byte { return viaJSON(t, d)[HeaderLen:] }

func TestDeliveryLen(t *testing.T) {
	for _, s := range awkward {
		for _, d := range []Delivery{
			{MsgID: MsgOneChat, ID: 3, Name: s, ToID: 4, Msg: s, Time: "2026-11-26 07:00:00", Seq: 12},
			{MsgID: MsgGroupChat, ID: -3, Name: "n", GroupID: 5, Msg: s, Time: s, GSeq: 1 << 40},
			{MsgID: -1 << 63, ID: 1<<63 - 1, Msg: s + s},
			{},
		} {
			checkLen(t, &d)
		}
	}
	// 4096 control characters: 6 bytes each once escaped.
	if n := JSONStringLen(strings.Repeat("\x01", 4096)); n != 6*4096+2 {
		t.Fatalf("JSONStringLen(4096 × \\x01) = %d", n)
	}
}

func FuzzDeliveryLen(f *testing.F) {
	for _, s := range awkward {
		f.Add(s, s, int64(5), int64(-1))
	}
	f.Fuzz(func(t *testing.T, a, b string, n, m int64) {
		checkLen(t, &Delivery{MsgID: MsgID(m), ID: UserID(n), Name: a, ToID: UserID(m), GroupID: GroupID(n), Msg: b,
			Time: a, Seq: Seq(m), GSeq: Seq(n)})
	})
}

func BenchmarkDeliveryEncoders(b *testing.B) {
	d := &Delivery{MsgID: MsgOneChat, ID: 1234, Name: "user1234", ToID: 5678, Msg: "a message of about a hundred bytes, as chatbench sends them: 0123456789abcdef0123456789",
		Time: "2026-11-26 07:00:00", Seq: 987654}
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			_, _ = Marshal(d)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			body, _ := json.Marshal(d)
			_ = AppendFrame(nil, body)
		}
	})
}
