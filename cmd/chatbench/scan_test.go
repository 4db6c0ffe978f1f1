package main

import (
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
	if f.MsgID != 6 || f.ID != 3 || f.ToID != 9 || f.Seq != 77 || string(f.msgText()) != d.Msg || f.HasReq {
		t.Fatalf("delivery: %+v", f)
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
		OfflineMsg: []codec.Delivery{{MsgID: 6, Seq: 4, Msg: "t=1;s=0;c=1;"}, {MsgID: 10, GroupID: 1, Seq: 5, Msg: "m\n2"}},
	}
	b, _ = json.Marshal(la)
	if err := scanFrame(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.MsgID != 2 || f.ReqID != 2 || string(f.Token) != la.Token || f.ID != 5 {
		t.Fatalf("login ack: %+v", f)
	}
	off := f.offline()
	if len(off) != 2 || off[0].Seq != 4 || off[1].Msg != "m\n2" {
		t.Fatalf("offline %+v", off)
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

func TestScanFrameRejectsGarbage(t *testing.T) {
	var f frame
	for _, s := range []string{``, `[]`, `{`, `{"msgid"}`, `{"msgid":}`, `{"msgid":1.5}`, `{"a":"unterminated}`, `{"a":[1,2}`, `{"a":@}`, `{"msgid":12345678901234567890}`} {
		if err := scanFrame([]byte(s), &f); err == nil {
			t.Errorf("accepted %q", s)
		}
	}
}
