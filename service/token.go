package service

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/chatcluster/chatcluster/codec"
)

// errBadToken covers every way a token can fail; the client only learns
// errno 1.
var errBadToken = errors.New("invalid token")

// tokenSigner issues and checks session tokens: "uid.version.expiry.mac"
// where mac is HMAC-SHA256 over the first three fields. A token is revoked
// when the user's token version moves past the one it carries (LOGINOUT).
// It is immutable and safe for concurrent use.
type tokenSigner struct {
	key []byte
	ttl time.Duration
}

func (ts tokenSigner) mac(payload string) string {
	h := hmac.New(sha256.New, ts.key)
	h.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

func (ts tokenSigner) issue(uid codec.UserID, version int64, now time.Time) string {
	payload := fmt.Sprintf("%d.%d.%d", uid, version, now.Add(ts.ttl).Unix())
	return payload + "." + ts.mac(payload)
}

// verify checks the signature and expiry and returns the token's version.
func (ts tokenSigner) verify(token string, uid codec.UserID, now time.Time) (int64, error) {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return 0, errBadToken
	}
	payload, mac := token[:i], token[i+1:]
	if !hmac.Equal([]byte(mac), []byte(ts.mac(payload))) {
		return 0, errBadToken
	}
	parts := strings.Split(payload, ".")
	if len(parts) != 3 {
		return 0, errBadToken
	}
	id, err1 := strconv.ParseInt(parts[0], 10, 64)
	version, err2 := strconv.ParseInt(parts[1], 10, 64)
	exp, err3 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || codec.UserID(id) != uid || now.Unix() >= exp {
		return 0, errBadToken
	}
	return version, nil
}
