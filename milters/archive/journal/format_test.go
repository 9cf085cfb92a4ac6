package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

func testHeader(size int64) *Header {
	t := time.Date(2026, 12, 7, 5, 15, 0, 0, time.UTC)
	return &Header{
		Version: Version, ID: NewID("lax", t), Site: "lax", Host: "mx1.example", Time: t,
		Direction: "inbound", Tenant: "acme", Targets: []string{"vault"}, RuleIDs: []string{"r1"},
		Size: size, MessageID: "<m1@example.org>",
		Envelope: milterrt.Envelope{
			SessionID: "s1", QueueID: "4ABC", Sender: "alice@example.org",
			Client: milterrt.EnvelopeClient{Host: "mail.example.org", Addr: "192.0.2.1", Port: 25, Family: "inet"},
			Rcpts: []milterrt.EnvelopeRcpt{
				{Addr: "bob@example.com", Action: "continue"},
				{Addr: "carol@example.com", Action: "continue", Params: milterrt.Params{{Key: "NOTIFY", Value: "NEVER"}}},
			},
			ConnStart: t.Add(-time.Second),
		},
	}
}

func encodeT(t *testing.T, h *Header, msg []byte) []byte {
	t.Helper()
	r, size, err := Encode(h, bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(rec)) != size {
		t.Fatalf("Encode said size %d, record has %d bytes", size, len(rec))
	}
	return rec
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"one byte", []byte("x")},
		{"small", []byte("From: a@example.org\r\nTo: b@example.com\r\n\r\nhello\r\n")},
		{"newlines and 8-bit", []byte("Subject: \xe4\xf6\r\n\r\n\n\n\r\n\x00\xff")},
		{"looks like a record", []byte(Magic + `{"v":1}` + "\n" + Magic)},
		{"200 KiB", bytes.Repeat([]byte("0123456789abcdef\r\n"), 200<<10/18)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := testHeader(int64(len(tt.msg)))
			rec := encodeT(t, h, tt.msg)
			if !bytes.HasPrefix(rec, []byte(Magic+"{")) {
				t.Fatalf("record starts %q", rec[:min(20, len(rec))])
			}
			got, mr, err := Decode(bytes.NewReader(rec))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, h) {
				t.Errorf("header:\n got %+v\nwant %+v", got, h)
			}
			body, err := io.ReadAll(mr)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(body, tt.msg) {
				t.Errorf("message: got %d bytes, want %d, not identical", len(body), len(tt.msg))
			}
		})
	}
}

func TestEncodeVersionDefault(t *testing.T) {
	h := testHeader(1)
	h.Version = 0
	rec := encodeT(t, h, []byte("x"))
	got, _, err := Decode(bytes.NewReader(rec))
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != Version || h.Version != 0 {
		t.Errorf("decoded version %d (want %d), caller's header changed to %d", got.Version, Version, h.Version)
	}
}

func TestEncodeWrongSize(t *testing.T) {
	tests := []struct {
		name    string
		size    int64
		msg     string
		wantErr string
	}{
		{"message shorter", 10, "12345", "ends after 5 bytes, size says 10"},
		{"message longer", 3, "12345", "more than the 3 bytes"},
		{"empty message, size 1", 1, "", "ends after 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _, err := Encode(testHeader(tt.size), strings.NewReader(tt.msg))
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(r)
			if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err %v, want ErrBadRecord with %q", err, tt.wantErr)
			}
		})
	}
	if _, _, err := Encode(testHeader(-1), strings.NewReader("")); !errors.Is(err, ErrBadRecord) {
		t.Errorf("negative size: err %v", err)
	}
	h := testHeader(0)
	h.ID = "x/y"
	if _, _, err := Encode(h, strings.NewReader("")); !errors.Is(err, ErrBadRecord) {
		t.Errorf("id x/y: err %v", err)
	}
	h = testHeader(0)
	h.Version = 2
	if _, _, err := Encode(h, strings.NewReader("")); !errors.Is(err, ErrBadRecord) {
		t.Errorf("version 2: err %v", err)
	}
}

func TestDecodeBad(t *testing.T) {
	good := encodeT(t, testHeader(5), []byte("hello"))
	line := good[:bytes.IndexByte(good, '\n')+1]
	tests := []struct {
		name    string
		rec     []byte
		wantErr string // in the error of Decode, or of reading the message if prefixed "read: "
	}{
		{"empty", nil, "0 bytes, want the"},
		{"short magic", []byte("GMJ"), "3 bytes, want the"},
		{"garbage", []byte("From: x\r\n\r\nbody"), `starts with "From:"`},
		{"other version magic", []byte("GMJ2 {}\n"), "unknown format version"},
		{"no newline", []byte(Magic + `{"v":1,"size":0}`), `without "\n"`},
		{"huge line", append([]byte(Magic), bytes.Repeat([]byte("a"), MaxHeaderLine)...), "longer than"},
		{"bad JSON", []byte(Magic + "{\"v\":1,\n"), "header JSON"},
		{"wrong JSON type", []byte(Magic + `{"v":"1"}` + "\n"), "header JSON"},
		{"JSON array", []byte(Magic + `[1]` + "\n"), "header JSON"},
		{"data after JSON", []byte(Magic + `{"v":1} {}` + "\n"), "data after the object"},
		{"version 2", []byte(Magic + `{"v":2,"id":"x"}` + "\n"), "version 2"},
		{"version missing", []byte(Magic + `{"id":"x"}` + "\n"), "version 0"},
		{"negative size", []byte(Magic + `{"v":1,"id":"a","size":-1}` + "\n"), "negative size"},
		{"no id", []byte(Magic + `{"v":1,"size":0}` + "\n"), `journal id ""`},
		{"id with slash", []byte(Magic + `{"v":1,"id":"a/../../b","size":0}` + "\n"), "want only A-Z a-z 0-9"},
		{"id starting with dot", []byte(Magic + `{"v":1,"id":"..","size":0}` + "\n"), "not starting with '.'"},
		{"message short", append(append([]byte{}, line...), "hell"...), "read: ends after 4 bytes, size says 5"},
		{"message long", append(append([]byte{}, good...), '!'), "read: more than the 5 bytes"},
		{"message missing", line, "read: ends after 0 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, mr, err := Decode(bytes.NewReader(tt.rec))
			if want, ok := strings.CutPrefix(tt.wantErr, "read: "); ok {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				_, err = io.ReadAll(mr)
				if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), want) {
					t.Fatalf("reading: err %v, want ErrBadRecord with %q", err, want)
				}
				if !strings.Contains(err.Error(), h.ID) {
					t.Errorf("error %q does not name the record %s", err, h.ID)
				}
				// The error is sticky.
				if _, err2 := mr.Read(make([]byte, 1)); err2 == nil {
					t.Errorf("read after the error: nil error")
				}
				return
			}
			if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want ErrBadRecord with %q", err, tt.wantErr)
			}
			if h != nil || mr != nil {
				t.Errorf("header or reader returned with an error")
			}
		})
	}
}

// errReader fails after its bytes.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = e.err
	}
	return n, err
}

func TestDecodeReadError(t *testing.T) {
	rec := encodeT(t, testHeader(5), []byte("hello"))
	boom := errors.New("disk on fire")
	for _, n := range []int{0, 3, len(Magic) + 10} {
		_, _, err := Decode(&errReader{bytes.NewReader(rec[:n]), boom})
		if !errors.Is(err, boom) || errors.Is(err, ErrBadRecord) {
			t.Errorf("read error after %d bytes: err %v, want the read error, not ErrBadRecord", n, err)
		}
	}
	_, mr, err := Decode(&errReader{bytes.NewReader(rec[:len(rec)-2]), boom})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(mr); !errors.Is(err, boom) || errors.Is(err, ErrBadRecord) {
		t.Errorf("err %v, want the read error, not ErrBadRecord", err)
	}
}

func TestNewID(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 5, 15, 0, 0, time.FixedZone("PST", -8*3600))
	tests := []struct{ site, wantPrefix string }{
		{"lax", "lax-20261207T131500Z-"},
		{"", "x-20261207T131500Z-"},
		{"eu west/1", "eu_west_1-20261207T131500Z-"},
		{"a<b>@c\r\n", "a_b__c__-20261207T131500Z-"},
		{"ü", "__-20261207T131500Z-"},
	}
	safe := regexp.MustCompile(`^[A-Za-z0-9._]+-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{16}$`)
	for _, tt := range tests {
		id := NewID(tt.site, t0)
		if !strings.HasPrefix(id, tt.wantPrefix) || !safe.MatchString(id) {
			t.Errorf("NewID(%q) = %q, want prefix %q and %s", tt.site, id, tt.wantPrefix, safe)
		}
	}
	seen := map[string]bool{}
	for range 10000 {
		if err := CheckID(NewID("a b/c", t0)); err != nil {
			t.Fatal(err)
		}
		id := NewID("lax", t0)
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
	// Sorting ids of one site sorts them by time.
	var ids []string
	for i := 5; i >= 0; i-- {
		ids = append(ids, NewID("lax", t0.Add(time.Duration(i)*time.Hour)))
	}
	sorted := append([]string(nil), ids...)
	sort.Strings(sorted)
	for i := range sorted {
		if sorted[i] != ids[len(ids)-1-i] {
			t.Fatalf("ids do not sort by time: %v", sorted)
		}
	}
}

func TestCheckID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr string
	}{
		{"lax-20261207T051500Z-0123456789abcdef", ""},
		{"a", ""},
		{"A.b_c-9", ""},
		{strings.Repeat("a", MaxIDLen), ""},
		{"", "want 1 to 200 bytes"},
		{strings.Repeat("a", MaxIDLen+1), "want 1 to 200 bytes"},
		{".hidden", "not starting with '.'"},
		{"../x", "not starting with '.'"},
		{"a/../../b", "want only A-Z a-z 0-9"},
		{"a@b", "want only A-Z a-z 0-9"},
		{"a b", "want only A-Z a-z 0-9"},
		{"a\r\n", "want only A-Z a-z 0-9"},
		{"é", "want only A-Z a-z 0-9"},
	}
	for _, tt := range tests {
		err := CheckID(tt.id)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("CheckID(%q) = %v, want %q", tt.id, err, tt.wantErr)
		}
	}
}

func TestWantsTarget(t *testing.T) {
	tests := []struct {
		targets []string
		name    string
		want    bool
	}{
		{nil, "vault", true},
		{[]string{"vault"}, "vault", true},
		{[]string{"files", "vault"}, "vault", true},
		{[]string{"files"}, "vault", false},
		{[]string{"Vault"}, "vault", false},
	}
	for _, tt := range tests {
		h := &Header{Targets: tt.targets}
		if got := h.WantsTarget(tt.name); got != tt.want {
			t.Errorf("Targets %v WantsTarget(%q) = %v, want %v", tt.targets, tt.name, got, tt.want)
		}
	}
}

// FuzzDecode: any input gives a header and a reader or an error, never a
// panic; a decoded message is exactly Size bytes or its reader fails with
// ErrBadRecord; what decodes encodes back to an equal header.
func FuzzDecode(f *testing.F) {
	r, _, err := Encode(testHeader(5), strings.NewReader("hello"))
	if err != nil {
		f.Fatal(err)
	}
	good, _ := io.ReadAll(r)
	f.Add(good)
	f.Add([]byte(Magic + `{"v":1,"id":"a","size":3}` + "\nabc"))
	f.Add([]byte(Magic + `{"v":1,"id":"a","size":3}` + "\nab"))
	f.Add([]byte("GMJ1 {\n"))
	f.Fuzz(func(t *testing.T, rec []byte) {
		h, mr, err := Decode(bytes.NewReader(rec))
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("error not ErrBadRecord: %v", err)
			}
			return
		}
		body, err := io.ReadAll(mr)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("message error not ErrBadRecord: %v", err)
			}
			return
		}
		if int64(len(body)) != h.Size {
			t.Fatalf("message of %d bytes, size %d", len(body), h.Size)
		}
		again, _, err := Decode(bytes.NewReader(encodeT(t, h, body)))
		if err != nil {
			t.Fatalf("re-encoded record: %v", err)
		}
		// Compared as JSON: an empty list and no list are the same
		// header ("targets": [] means every target, as no key does).
		a, _ := json.Marshal(again)
		b, _ := json.Marshal(h)
		if !bytes.Equal(a, b) {
			t.Fatalf("re-encoded header differs:\n%s\n%s", a, b)
		}
	})
}
