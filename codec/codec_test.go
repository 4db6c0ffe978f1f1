package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
	"unicode/utf8"
)

func frame(body string) []byte { return AppendFrame(nil, []byte(body)) }

func TestDecode(t *testing.T) {
	big := make([]byte, 4)
	binary.BigEndian.PutUint32(big, 70000)
	tests := []struct {
		name     string
		in       []byte
		max      int
		wantBody string
		wantN    int
		wantErr  error
	}{
		{"empty buffer", nil, 100, "", 0, ErrIncomplete},
		{"partial header", []byte{0, 0}, 100, "", 0, ErrIncomplete},
		{"header only", []byte{0, 0, 0, 5}, 100, "", 0, ErrIncomplete},
		{"partial body", append([]byte{0, 0, 0, 5}, "ab"...), 100, "", 0, ErrIncomplete},
		{"whole frame", frame(`{"a":1}`), 100, `{"a":1}`, 11, nil},
		{"two frames", append(frame("x"), frame("yz")...), 100, "x", 5, nil},
		{"zero length", []byte{0, 0, 0, 0, 1}, 100, "", 0, ErrEmptyFrame},
		{"too large", big, 65536, "", 0, ErrFrameTooLarge},
		{"exactly max", frame("abcd"), 4, "abcd", 8, nil},
		{"max plus one", frame("abcde"), 4, "", 0, ErrFrameTooLarge},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff}, 65536, "", 0, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, n, err := Decode(tt.in, tt.max)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if string(body) != tt.wantBody || n != tt.wantN {
				t.Fatalf("got (%q, %d), want (%q, %d)", body, n, tt.wantBody, tt.wantN)
			}
		})
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr bool
		msgid   MsgID
		reqid   string
	}{
		{"login", `{"msgid":1,"id":3,"password":"secret1","reqid":7}`, false, MsgLogin, "7"},
		{"string reqid", `{"msgid":13,"reqid":"abc"}`, false, MsgPing, `"abc"`},
		{"unknown fields ignored", `{"msgid":13,"extra":[1,2]}`, false, MsgPing, ""},
		{"malformed", `{"msgid":1,`, true, 0, ""},
		{"not an object", `[1,2,3]`, true, 0, ""},
		{"mistyped id keeps msgid and reqid", `{"msgid":6,"reqid":9,"toid":"two","msg":"x"}`, true, MsgOneChat, "9"},
		{"float id", `{"msgid":6,"toid":1.5}`, true, MsgOneChat, ""},
		{"object reqid", `{"msgid":13,"reqid":{"a":1}}`, true, MsgPing, ""},
		{"invalid utf8 keeps msgid and reqid", "{\"msgid\":6,\"reqid\":8,\"msg\":\"\xff\xfe\"}", true, MsgOneChat, "8"},
		{"invalid utf8 in reqid", "{\"msgid\":13,\"reqid\":\"a\xff\"}", true, MsgPing, ""},
		{"invalid utf8, not an object", "\xff", true, 0, ""},
		{"mistyped msgid", `{"msgid":"1"}`, true, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ParseRequest([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			var bre *BadRequestError
			if err != nil && !errors.As(err, &bre) {
				t.Fatalf("error %T is not a *BadRequestError", err)
			}
			if req.MsgID != tt.msgid || string(req.ReqID) != tt.reqid {
				t.Fatalf("got msgid %d reqid %q, want %d %q", req.MsgID, req.ReqID, tt.msgid, tt.reqid)
			}
		})
	}
}

func TestClientMsgID(t *testing.T) {
	ok := map[string]string{`"a1"`: "s:a1", `42`: "n:42", ``: "", `null`: ""}
	for in, want := range ok {
		r := &Request{ClientMsgID: []byte(in)}
		got, err := r.ClientMsgIDString()
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{`""`, `1.5`, `{}`, `"` + string(bytes.Repeat([]byte("x"), 65)) + `"`} {
		r := &Request{ClientMsgID: []byte(in)}
		if _, err := r.ClientMsgIDString(); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
}

// decodeStream splits a byte stream into frames the way the server does:
// appending each chunk to a buffer and decoding until ErrIncomplete.
func decodeStream(chunks [][]byte, max int) (bodies []string, err error) {
	var buf []byte
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			body, n, err := Decode(buf, max)
			if errors.Is(err, ErrIncomplete) {
				break
			}
			if err != nil {
				return bodies, err
			}
			bodies = append(bodies, string(body))
			buf = buf[n:]
		}
	}
	return bodies, nil
}

func FuzzDecodeSplit(f *testing.F) {
	f.Add([]byte(`{"msgid":1,"id":1,"password":"abcdef"}`), []byte(`{"msgid":13}`), uint8(3))
	f.Add([]byte(`{"msgid":6,"toid":2,"msg":"héllo"}`), []byte("\xff\xfe"), uint8(1))
	f.Add([]byte(`[`), []byte(`{}`), uint8(0))
	f.Add([]byte{}, []byte(`{"msgid":"x"}`), uint8(7))
	f.Fuzz(func(t *testing.T, a, b []byte, split uint8) {
		stream := append(AppendFrame(nil, a), AppendFrame(nil, b)...)
		// Split the stream into pieces of (split%7)+1 bytes.
		step := int(split%7) + 1
		var chunks [][]byte
		for i := 0; i < len(stream); i += step {
			chunks = append(chunks, stream[i:min(i+step, len(stream))])
		}
		bodies, err := decodeStream(chunks, 1<<20)
		if len(a) == 0 {
			if !errors.Is(err, ErrEmptyFrame) {
				t.Fatalf("empty first frame: err = %v", err)
			}
			return
		}
		if len(b) == 0 {
			if !errors.Is(err, ErrEmptyFrame) || len(bodies) != 1 {
				t.Fatalf("empty second frame: bodies %d err %v", len(bodies), err)
			}
			return
		}
		if err != nil || len(bodies) != 2 || bodies[0] != string(a) || bodies[1] != string(b) {
			t.Fatalf("split %d: got %q, %v", step, bodies, err)
		}
		for _, body := range bodies {
			// Parsing never panics and always yields a Request.
			if req, _ := ParseRequest([]byte(body)); req == nil {
				t.Fatal("nil request")
			}
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{`{"msgid":1,"id":1,"password":"x"}`, `{"msgid":10,"groupid":1,"msg":"m","clientmsgid":"c"}`, "\xc3\x28", `{"msgid":1e400}`, `null`, `{"msgid":13,"MSG":"x","a":[{"b":"}"}],"c":"\\""}`, `{"msgid":6,"toid":2,"msg":"a\"b","Toid":3}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := ParseRequest(body)
		if req == nil {
			t.Fatal("nil request")
		}
		// Invalid JSON stays invalid, whatever member exactKeys drops.
		if err == nil && !json.Valid(body) {
			t.Fatalf("%q: not JSON, but accepted as %+v", body, req)
		}
		// exactKeys keeps a valid object valid, with every member but the
		// folded ones, in order.
		var in, kept []string
		if json.Valid(body) && members(body, func(k, _ []byte) {
			if !folds(k) {
				in = append(in, string(k))
			}
		}) {
			out := exactKeys(body)
			if !json.Valid(out) || !members(out, func(k, _ []byte) { kept = append(kept, string(k)) }) || !slices.Equal(in, kept) {
				t.Fatalf("%q: exactKeys gave %q: keys %q, want %q", body, out, kept, in)
			}
		}
		if err == nil {
			_, _ = req.ClientMsgIDString()
		}
	})
}

// BenchmarkDecodeParse: a chat send as most are (the fast path), and one
// whose text has an escape (encoding/json).
func BenchmarkDecodeParse(b *testing.B) {
	for name, body := range map[string]string{
		"plain":   `{"msgid":6,"toid":12345,"msg":"hello there, how are you?","clientmsgid":"c-1","reqid":99}`,
		"escaped": `{"msgid":6,"toid":12345,"msg":"hello there,\nhow are you?","clientmsgid":"c-1","reqid":99}`,
	} {
		b.Run(name, func(b *testing.B) {
			buf := frame(body)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				body, _, err := Decode(buf, DefaultMaxFrame)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ParseRequest(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMarshalDelivery(b *testing.B) {
	d := Delivery{MsgID: MsgOneChat, ID: 1, Name: "alice", ToID: 2, Msg: "hello there, how are you?", Time: "2026-11-25 10:00:00", Seq: 12345}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(&d); err != nil {
			b.Fatal(err)
		}
	}
}

// Encode stores the frame once; copies made afterwards append the same
// bytes as a fresh encoding, and the stored frame is not part of the JSON.
func TestDeliveryEncodeOnce(t *testing.T) {
	d := Delivery{MsgID: MsgGroupChat, ID: 1, Name: "a", GroupID: 2, Msg: "hi", Time: "t", GSeq: 3}
	want := MustMarshal(&d)
	d.Encode()
	c := d // a copy, as in each member's notice
	if got := AppendFrameOf(nil, &c); !bytes.Equal(got, want) {
		t.Fatalf("frame %q, want %q", got, want)
	}
	if got := AppendFrameOf([]byte("x"), &c); !bytes.Equal(got, append([]byte("x"), want...)) {
		t.Fatalf("appended %q", got)
	}
	if !bytes.Equal(MustMarshal(&c), want) {
		t.Fatalf("the stored frame changed the JSON: %q", MustMarshal(&c))
	}
	if c != d {
		t.Fatal("a copy is not equal to its original")
	}

	// Into an empty buffer the stored frame itself is returned, shared by
	// the copies; appending to it copies, and leaves the frame as it was.
	shared, other := AppendFrameOf(nil, &c), AppendFrameOf(nil, &d)
	if &shared[0] != &other[0] || cap(shared) != len(shared) {
		t.Fatalf("not the stored frame, capped: cap %d, len %d", cap(shared), len(shared))
	}
	both := AppendFrameOf(shared, &d)
	if !bytes.Equal(both, append(append([]byte(nil), want...), want...)) || &both[0] == &shared[0] {
		t.Fatalf("appending to the shared frame: %q", both)
	}
	if got := AppendFrameOf(nil, &d); !bytes.Equal(got, want) {
		t.Fatalf("the stored frame changed: %q", got)
	}
}

// FuzzParseFast: whatever parseFast accepts, json.Unmarshal accepts too
// and decodes to the same Request.
func FuzzParseFast(f *testing.F) {
	for _, s := range []string{
		`{"msgid":6,"toid":12345,"msg":"hello","clientmsgid":"c-1","reqid":99}`,
		` { "msgid" : 1 , "id" : -9223372036854775808 , "password" : "p" } `,
		`{"msgid":7,"seq":9223372036854775807,"gseq":0,"x":"y","z":-1}`,
		`{"MSGID":1}`, `{"msgid":1.0}`, `{"msgid":01}`, `{"msg":"a\nb"}`, `{"msg":null}`, `{}`, `{"msgid":1}x`,
		`{"reqid":"r","clientmsgid":5,"name":"é","groupname":"g","groupdesc":"d","friendid":3,"groupid":4,"token":"t"}`,
		"{\"\u212asgid\":1}", `{"id":9223372036854775808}`, `{"a":{"b":1}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var fast Request
		if !utf8.Valid(body) || !parseFast(body, &fast) {
			return
		}
		var slow Request
		if err := json.Unmarshal(body, &slow); err != nil {
			t.Fatalf("parseFast accepted %q; json.Unmarshal: %v", body, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: parseFast %+v, json.Unmarshal %+v", body, fast, slow)
		}
	})
}

// TestParseFastShapes: the frames clients send most take the fast path,
// the unusual ones are left to encoding/json, and both decode alike.
func TestParseFastShapes(t *testing.T) {
	for body, fast := range map[string]bool{
		`{"msgid":6,"toid":12345,"msg":"hello there","clientmsgid":"c-1","reqid":99}`: true,
		`{"msgid":1,"id":42,"password":"secret","reqid":"a"}`:                         true,
		`{"msgid":8,"seq":17}`:                         true,
		`{"msgid":6,"toid":2,"msg":"quote \" inside"}`: false,
		`{"msgid":6,"toid":2,"msg":null}`:              false,
		`{"msgid":6.5}`:                                false,
		`{"msgid":6,"extra":[1,2]}`:                    false,
		`{"msgid":6} {}`:                               false,
	} {
		var r Request
		if got := parseFast([]byte(body), &r); got != fast {
			t.Errorf("%s: fast path %v, want %v", body, got, fast)
		}
		req, err := ParseRequest([]byte(body))
		var want Request
		werr := json.Unmarshal([]byte(body), &want)
		if (err == nil) != (werr == nil) || (err == nil && !reflect.DeepEqual(*req, want)) {
			t.Errorf("%s: ParseRequest %+v, %v; json.Unmarshal %+v, %v", body, req, err, want, werr)
		}
	}
}

// Keys are exact: one that matches a field only when case is ignored is an
// unknown key, ignored, not the field (encoding/json would take it).
func TestParseRequestExactKeys(t *testing.T) {
	str := func(s string) *string { return &s }
	num := func(n int64) *int64 { return &n }
	for body, want := range map[string]Request{
		`{"MsgID":6}`: {},
		`{"msgid":6,"toid":2,"msg":"visible","MSG":"smuggled"}`: {MsgID: MsgOneChat, ToID: num(2), Msg: str("visible")},
		`{"msgid":6,"toid":2,"MSG":"smuggled","msg":"visible"}`: {MsgID: MsgOneChat, ToID: num(2), Msg: str("visible")},
		`{"msgid":6,"toid":2,"Msg":"a \" quote"}`:               {MsgID: MsgOneChat, ToID: num(2)},
		`{"msgid":12,"ſeq":3}`:                                  {MsgID: MsgDelivered},
		`{"msgid":7,"FRIENDID":2}`:                              {MsgID: MsgAddFriend},
		`{"msgid":13,"Reqid":5,"reqid":"a<b&c>\u2028","id":1}`:  {MsgID: MsgPing, ReqID: json.RawMessage(`"a<b&c>\u2028"`), ID: num(1)},
		`{"msgid":13,"\u0049D":"x","reqid":4}`:                  {MsgID: MsgPing, ReqID: json.RawMessage("4")},
		`{"msgid":13,"ID":"x","reqid":4}`:                       {MsgID: MsgPing, ReqID: json.RawMessage("4")},
	} {
		var r Request
		if parseFast([]byte(body), &r) {
			t.Errorf("%s: took the fast path", body)
		}
		req, err := ParseRequest([]byte(body))
		if err != nil {
			t.Errorf("%s: %v", body, err)
			continue
		}
		if !reflect.DeepEqual(*req, want) {
			t.Errorf("%s: got %+v, want %+v", body, *req, want)
		}
	}
}

// A key dropped as unknown changes nothing else: a request that is
// refused without it is refused with it.
func TestParseRequestExactKeysKeepsTheRest(t *testing.T) {
	for _, body := range []string{
		`{"msgid":6,"toid":2,"msg":5,"msg":"a"}`,
		`{"msgid":6,"toid":"x","toid":2,"msg":"a"}`,
	} {
		_, plain := ParseRequest([]byte(body))
		withFolded := body[:len(body)-1] + `,"MSG":1,"TOID":0}`
		_, err := ParseRequest([]byte(withFolded))
		if plain == nil || err == nil || err.Error() != plain.Error() {
			t.Errorf("%s: %v; with folded keys %v", body, plain, err)
		}
	}
}

// Dropping a wrong-case key never makes invalid JSON valid.
func TestParseRequestInvalidStaysInvalid(t *testing.T) {
	for _, body := range []string{
		`{"MSG":tru,"msgid":1}`,
		`{"msgid":1,"MSG":01}`,
		"{\"msgid\":1,\"MSG\":\"a\x01b\"}",
		`{"msgid":1,"MSG":1} trailing garbage`,
		`{"msgid":1,"MSG":1}}`,
		`{"msgid":1,"MSG":{"a" 1}}`,
	} {
		if req, err := ParseRequest([]byte(body)); err == nil {
			t.Errorf("%q: accepted as %+v", body, req)
		}
	}
}

// TestParseFastKnowsEveryKey: each of Request's JSON keys has its case in
// parseFast (a key it does not know is left to encoding/json, correct but
// slow).
func TestParseFastKnowsEveryKey(t *testing.T) {
	if len(requestKeys) != reflect.TypeFor[Request]().NumField() || len(requestKeys) == 0 {
		t.Fatalf("requestKeys %v", requestKeys)
	}
	for _, k := range requestKeys {
		var r Request
		if !parseFast([]byte(`{"`+k+`":1}`), &r) && !parseFast([]byte(`{"`+k+`":"v"}`), &r) {
			t.Errorf("key %q: parseFast has no case for it", k)
		}
	}
}
