package detect

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The corpora (issue 17, "False positives"): testdata/negative holds
// ordinary mail text full of numbers that must trigger nothing;
// testdata/positive holds true cases that must trigger every time. A
// positive file starts with a line "#expect cards=N ibans=M" (not scanned)
// giving the exact counts. Every file is also scanned one byte per Write:
// the findings must be the same.
func TestCorpus(t *testing.T) {
	d := mustNew(t, Config{Cards: true, IBAN: true})
	neg := corpusFiles(t, "negative")
	pos := corpusFiles(t, "positive")
	if len(neg) < 40 || len(pos) < 40 {
		t.Fatalf("corpora too small: %d negative, %d positive files (want ≥ 40 each)", len(neg), len(pos))
	}

	falsePos, ignored := 0, 0
	for _, path := range neg {
		text := readFile(t, path)
		f := scanBoth(t, d, path, text)
		ignored += f.CardsIgnored
		if f.Fired() {
			falsePos++
			t.Errorf("false positive: %s: %+v", filepath.Base(path), f.Hits)
		}
	}

	detected, cards, ibans := 0, 0, 0
	for _, path := range pos {
		text := readFile(t, path)
		nl := bytes.IndexByte(text, '\n')
		var wantCards, wantIBANs int
		if nl < 0 {
			t.Fatalf("%s: no #expect line", path)
		}
		if _, err := fmt.Sscanf(string(text[:nl]), "#expect cards=%d ibans=%d", &wantCards, &wantIBANs); err != nil {
			t.Fatalf("%s: first line %q: %v", path, text[:nl], err)
		}
		f := scanBoth(t, d, path, text[nl+1:])
		if f.Fired() {
			detected++
		}
		if f.Cards != wantCards || f.IBANs != wantIBANs {
			t.Errorf("miss: %s: %d cards, %d IBANs, want %d and %d", filepath.Base(path), f.Cards, f.IBANs, wantCards, wantIBANs)
		}
		cards += f.Cards
		ibans += f.IBANs
	}

	fpRate := 100 * float64(falsePos) / float64(len(neg))
	detRate := 100 * float64(detected) / float64(len(pos))
	t.Logf("negative corpus: %d files, %d false positives (%.1f%%), %d valid card numbers left uncounted by context",
		len(neg), falsePos, fpRate, ignored)
	t.Logf("positive corpus: %d files, %d detected (%.1f%%), %d cards and %d IBANs counted", len(pos), detected, detRate, cards, ibans)
	fmt.Printf("detect corpus: false positives %d/%d (%.1f%%), detected %d/%d (%.1f%%)\n",
		falsePos, len(neg), fpRate, detected, len(pos), detRate)
}

func corpusFiles(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", dir, "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// scanBoth scans text in one Write and one byte per Write, and fails the
// test when the findings differ.
func scanBoth(t *testing.T, d *Detector, path string, text []byte) Findings {
	t.Helper()
	s := d.Scanner()
	s.Write(text)
	whole := s.Close()
	s = d.Scanner()
	for i := range text {
		s.Write(text[i : i+1])
	}
	if bytewise := s.Close(); !sameFindings(whole, bytewise) {
		t.Errorf("%s: one Write %+v, byte by byte %+v", filepath.Base(path), whole, bytewise)
	}
	return whole
}
