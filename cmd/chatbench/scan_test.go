package main

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/chatcluster/chatcluster/codec"
)

func TestScanFrameServerMessages(t *testing.T) {
	var f frame
	d := codec.Delivery{MsgID: codec.MsgOneChat, ID: 3, Name: "a \"quoted\" name", ToID: 9, Msg: "t=1;s=2;c=3;xx", Time: "2026-01-01 00:00:00", Seq: 77}
	b, _ := json.Marshal(d)
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 6 || f.ID != 3 || f.ToID != 9 || f.Seq != 77 || f.GSeq != 0 || f.GroupID != 0 || string(f.msgText()) != d.Msg || f.HasReq {
		t.Fatalf("delivery: %+v", f)
	}
	// A group delivery: numbered in the group's log (gseq), no inbox seq.
	gd := codec.Delivery{MsgID: codec.MsgGroupChat, ID: 4, Name: "m", GroupID: 12, Msg: "t=5;s=1;c=2;x", Time: "2026-01-01 00:00:00", GSeq: 9000000001}
	b, _ = json.Marshal(gd)
	if bytes.Contains(b, []byte(`"seq"`)) {
		t.Fatalf("codec still writes seq on a group delivery: %s", b)
	}
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 10 || f.ID != 4 || f.GroupID != 12 || f.GSeq != 9000000001 || f.Seq != 0 || string(f.msgText()) != gd.Msg {
		t.Fatalf("group delivery: %+v", f)
	}
	// The ACK of a GROUP_CHAT carries the new message's gseq.
	b, _ = json.Marshal(codec.Ack{MsgID: codec.MsgAck, ReqID: json.RawMessage("7"), Ack: codec.MsgGroupChat, ErrMsg: "ok", Time: "x", GSeq: 31})
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 11 || f.ReqID != 7 || f.Ack != 10 || f.GSeq != 31 || f.Seq != 0 || f.GroupID != 0 {
		t.Fatalf("group chat ack: %+v", f)
	}
	ack := codec.Ack{MsgID: codec.MsgAck, ReqID: json.RawMessage("12345"), Ack: codec.MsgCreateGroup, ErrMsg: "ok", GroupID: 8, Time: "x"}
	b, _ = json.Marshal(ack)
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 11 || !f.HasReq || f.ReqID != 12345 || f.Ack != 8 || f.GroupID != 8 || f.Errno != 0 || string(f.ErrMsg) != "ok" {
		t.Fatalf("ack: %+v", f)
	}
	la := codec.LoginAck{
		MsgID: codec.MsgLoginAck, ReqID: json.RawMessage("2"), ErrMsg: "ok", ID: 5, Name: "n", Token: "5.0.99.abc_-",
		Friends:    []codec.Friend{{ID: 1, Name: "}{", State: "online"}},
		Groups:     []codec.Group{{ID: 1, Name: "g", Users: []codec.GroupUser{{ID: 2, Name: "[", Role: "creator"}}}},
		OfflineMsg: []codec.Delivery{{MsgID: 6, Seq: 4, Msg: "t=1;s=0;c=1;"}, {MsgID: 10, GroupID: 1, Seq: 5, Msg: "m\n2"}, {MsgID: 10, GroupID: 2, GSeq: 6, Msg: "g"}},
	}
	b, _ = json.Marshal(la)
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 2 || f.ReqID != 2 || string(f.Token) != la.Token || f.ID != 5 {
		t.Fatalf("login ack: %+v", f)
	}
	off := f.offline()
	if len(off) != 3 || off[0].Seq != 4 || off[0].MsgID != 6 || off[1].Msg != "m\n2" || off[1].GroupID != 1 || off[1].Seq != 5 ||
		off[2].GroupID != 2 || off[2].GSeq != 6 || off[2].Seq != 0 || off[2].MsgID != 10 {
		t.Fatalf("offline %+v", off)
	}
	if f.GSeq != 0 || f.Seq != 0 {
		t.Fatalf("offlineMsg members leaked into the top level: %+v", f)
	}
	b, _ = json.Marshal(codec.Delivery{MsgID: 10, Msg: "line\nbreak \\ \u00e9", Seq: 1})
	if err := scanFrame(b, &f); err != nil || string(f.msgText()) != "line\nbreak \\ \u00e9" {
		t.Fatalf("escaped msg %q %v", f.msgText(), err)
	}
	// A string reqid (not ours) and literals.
	if err := scanFrame([]byte(` { "msgid" : 14 , "reqid":"x", "a":true, "b":null, "c":-1 } `), &f); err != nil || f.MsgID != 14 || f.ReqID != -1 {
		t.Fatalf("pong %+v %v", f, err)
	}
}

// TestScanFrameAllocs: scanning a delivery or an ACK allocates nothing.
func TestScanFrameAllocs(t *testing.T) {
	var f frame
	d, _ := json.Marshal(codec.Delivery{MsgID: 10, ID: 4, Name: "m", GroupID: 12, Msg: "t=5;s=1;c=2;xxxx", Time: "2026-01-01 00:00:00", GSeq: 77})
	a, _ := json.Marshal(codec.Ack{MsgID: codec.MsgAck, ReqID: json.RawMessage("7"), Ack: codec.MsgGroupChat, ErrMsg: "ok", Time: "x", GSeq: 31})
	n := testing.AllocsPerRun(100, func() {
		if scanFrame(d, &f) != nil || f.GSeq != 77 || scanFrame(a, &f) != nil || f.GSeq != 31 {
			t.Fatal("scan")
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per delivery and ACK", n)
	}
}

func TestScanFrameRejectsGarbage(t *testing.T) {
	var f frame
	for _, s := range []string{``, `[]`, `{`, `{"msgid"}`, `{"msgid":}`, `{"msgid":1.5}`, `{"a":"unterminated}`, `{"a":[1,2}`, `{"a":@}`, `{"msgid":12345678901234567890}`, `{"gseq":1e3}`, `{"gseq":}`} {
		if err := scanFrame([]byte(s), &f); err == nil {
			t.Errorf("accepted %q", s)
		}
	}
}
