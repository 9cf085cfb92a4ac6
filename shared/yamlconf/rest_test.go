package yamlconf

import (
	"strings"
	"testing"
)

type restCommon struct {
	Listen string `yaml:"listen"`
	Rest   Rest   `yaml:",rest"`
}

type restOwn struct {
	AuthservID string `yaml:"authserv_id"`
	DKIM       struct {
		MaxSignatures int `yaml:"max_signatures"`
	} `yaml:"dkim"`
}

func TestDecodeRest(t *testing.T) {
	in := `
base: &b {authserv_id: mx.example}
milters:
  policy:
    listen: unix:/run/p.sock
    <<: *b
    dkim: {max_signatures: two}
  access:
    listn: unix:/run/a.sock
    dkim: {}
`
	var c struct {
		Base    map[string]string      `yaml:"base"`
		Milters map[string]*restCommon `yaml:"milters"`
	}
	doc, ps := Decode("r.yaml", []byte(in), &c)
	if len(ps) != 0 {
		t.Fatalf("Decode problems: %v", ps)
	}
	p := c.Milters["policy"]
	if p.Listen != "unix:/run/p.sock" || p.Rest.Len() != 2 {
		t.Fatalf("policy = %+v (rest %d keys)", p, p.Rest.Len())
	}
	if !doc.Has("milters.policy.dkim") || !doc.Has("milters.policy.authserv_id") || !doc.Has("milters.access.listn") {
		t.Error("positions of the rest keys not recorded")
	}
	own := restOwn{AuthservID: "default"}
	own.DKIM.MaxSignatures = 8
	doc.DecodeRest(&p.Rest, &own)
	if !doc.Has("milters.policy.dkim.max_signatures") {
		t.Error("positions inside the rest keys not recorded by DecodeRest")
	}
	if own.AuthservID != "mx.example" || own.DKIM.MaxSignatures != 8 {
		t.Errorf("own = %+v", own)
	}
	doc.DecodeRest(&c.Milters["access"].Rest, &struct{}{})
	got := doc.Problems().Error()
	wantLines := []string{
		`r.yaml:7:28: milters.policy.dkim.max_signatures: expected an integer, got "two"`,
		`r.yaml:9:5: milters.access.listn: unknown key, did you mean "listen"? (known: listen)`,
		`r.yaml:10:5: milters.access.dkim: unknown key (known: listen)`,
	}
	if got != strings.Join(wantLines, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", got, strings.Join(wantLines, "\n"))
	}
}

func TestDecodeRestNothingLeft(t *testing.T) {
	var c restCommon
	doc, _ := Decode("r.yaml", []byte("listen: x\n"), &c)
	doc.DecodeRest(&c.Rest, &restOwn{})
	if ps := doc.Problems(); ps != nil {
		t.Errorf("problems: %v", ps)
	}
	var zero Rest
	doc.DecodeRest(&zero, &restOwn{}) // a section absent from the file
	doc.DecodeRest(&zero, 3)
	if got := doc.Problems().Error(); !strings.Contains(got, "internal error: DecodeRest needs a non-nil pointer to a struct, got int") {
		t.Errorf("problems: %v", got)
	}
}
