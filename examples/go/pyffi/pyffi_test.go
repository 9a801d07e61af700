package pyffi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// open loads the model named by PYFFI_TEST_MODEL and a small session on it,
// both closed when the test ends.
func open(t *testing.T) (*Model, *Session) {
	t.Helper()
	dir := os.Getenv("PYFFI_TEST_MODEL")
	if dir == "" {
		t.Skip("PYFFI_TEST_MODEL is not set")
	}
	m, err := LoadModel(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	s, err := m.NewSession(128, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return m, s
}

// wantStatus checks that err is an *Error with the given status.
func wantStatus(t *testing.T, err error, status uint32) {
	t.Helper()
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("want *Error with status %d, got %v", status, err)
	}
	if perr.Status != status || perr.Name != statusName(status) || perr.Message == "" {
		t.Fatalf("want status %d (%s) with a message, got %+v", status, statusName(status), perr)
	}
}

func sampling() SamplingParams {
	p := DefaultSamplingParams()
	p.Temperature, p.TopK, p.TopP, p.MinP, p.Seed, p.StopAtEOS = 0.8, 40, 0.95, 0.05, 1234, false
	return p
}

func TestInfo(t *testing.T) {
	if ABIVersion() != 1 {
		t.Errorf("ABIVersion() = %d, want 1", ABIVersion())
	}
	if Version() == "" {
		t.Error("Version() is empty")
	}
	if Threads() < 1 {
		t.Errorf("Threads() = %d, want >= 1", Threads())
	}
}

func TestForwardLogits(t *testing.T) {
	m, s := open(t)
	vocab := m.VocabSize()
	if vocab <= 0 {
		t.Fatalf("VocabSize() = %d", vocab)
	}
	logits, err := s.Forward([][]int32{{1, 2, 3}}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(logits) != vocab {
		t.Fatalf("got %d logits, want %d", len(logits), vocab)
	}
	all, err := s.Forward([][]int32{{1, 2, 3}}, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3*vocab || !slices.Equal(all[2*vocab:], logits) {
		t.Fatalf("full logits: got %d values whose last row differs from lastOnly", len(all))
	}
}

func TestRaggedBatchMatchesSingleRows(t *testing.T) {
	m, s := open(t)
	vocab := m.VocabSize()
	rows := [][]int32{{1, 5, 9, 13, 2}, {7, 3}}
	batch, err := s.Forward(rows, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	maxLen := 5
	if len(batch) != len(rows)*maxLen*vocab {
		t.Fatalf("got %d logits, want %d", len(batch), len(rows)*maxLen*vocab)
	}
	for i, row := range rows {
		alone, err := s.Forward([][]int32{row}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		got := batch[i*maxLen*vocab : (i*maxLen+len(row))*vocab]
		if !slices.Equal(got, alone) {
			t.Errorf("row %d: batched logits differ from running it alone", i)
		}
		// Positions past a shorter row are zeros.
		for _, v := range batch[(i*maxLen+len(row))*vocab : (i+1)*maxLen*vocab] {
			if v != 0 {
				t.Fatalf("row %d: padding is not zero", i)
			}
		}
	}
}

func TestStartPosContinuesTheCache(t *testing.T) {
	_, s := open(t)
	whole, err := s.Forward([][]int32{{1, 2, 3, 4}}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forward([][]int32{{1, 2}}, nil, true); err != nil {
		t.Fatal(err)
	}
	rest, err := s.Forward([][]int32{{3, 4}}, []uint32{2}, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(whole, rest) {
		t.Error("continuing from startPos 2 differs from one pass")
	}
	_, err = s.Forward([][]int32{{1}}, []uint32{0, 0}, true)
	wantStatus(t, err, StatusInvalidArgument)
}

func TestSameSeedSameTokens(t *testing.T) {
	_, s := open(t)
	a, fa, err := s.Generate([]int32{1, 2, 3}, 16, sampling(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, fb, err := s.Generate([]int32{1, 2, 3}, 16, sampling(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 16 || fa != FinishLength {
		t.Fatalf("got %d tokens (%s), want 16 (length)", len(a), fa)
	}
	if !slices.Equal(a, b) || fa != fb {
		t.Errorf("same seed gave %v (%s) then %v (%s)", a, fa, b, fb)
	}
}

func TestCallbackStreamsAndCancels(t *testing.T) {
	_, s := open(t)
	var seen []int32
	tokens, finish, err := s.Generate([]int32{1, 2, 3}, 12, sampling(), func(tok int32) bool {
		seen = append(seen, tok)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, tokens) || finish != FinishLength {
		t.Fatalf("callback saw %v, Generate returned %v (%s)", seen, tokens, finish)
	}

	seen = nil
	tokens, finish, err = s.Generate([]int32{1, 2, 3}, 12, sampling(), func(tok int32) bool {
		seen = append(seen, tok)
		return len(seen) < 3
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 3 || !slices.Equal(seen, tokens) || finish != FinishCancelled {
		t.Fatalf("got %v (%s), callback saw %v; want 3 tokens, cancelled", tokens, finish, seen)
	}
}

func TestStopTokens(t *testing.T) {
	_, s := open(t)
	full, _, err := s.Generate([]int32{1, 2, 3}, 12, sampling(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := sampling()
	p.StopTokens = []int32{full[4]}
	stopped, finish, err := s.Generate([]int32{1, 2, 3}, 12, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	cut := slices.Index(full, full[4])
	if finish != FinishStop || !slices.Equal(stopped, full[:cut]) {
		t.Errorf("stop at %d: got %v (%s), want %v (stop)", full[4], stopped, finish, full[:cut])
	}
}

func TestCallbackPanicIsReraised(t *testing.T) {
	_, s := open(t)
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want boom", r)
		}
	}()
	s.Generate([]int32{1, 2, 3}, 8, sampling(), func(int32) bool { panic("boom") })
}

func TestErrors(t *testing.T) {
	m, s := open(t)
	_, err := LoadModel(filepath.Join(t.TempDir(), "missing"))
	wantStatus(t, err, StatusNotFound)

	_, err = s.Forward([][]int32{{1, int32(m.VocabSize())}}, nil, true)
	wantStatus(t, err, StatusOutOfRange)

	_, _, err = s.Generate(nil, 4, sampling(), nil)
	wantStatus(t, err, StatusInvalidArgument)

	p := sampling()
	p.TopK = -1
	_, _, err = s.Generate([]int32{1}, 4, p, nil)
	wantStatus(t, err, StatusInvalidArgument)

	// The session still works after errors.
	if _, err := s.Forward([][]int32{{1}}, nil, true); err != nil {
		t.Fatal(err)
	}
}

func TestCloseTwice(t *testing.T) {
	m, s := open(t)
	s2, err := m.NewSession(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Sessions keep the weights alive: the model handle can go first.
	m.Close()
	m.Close()
	if _, err := s2.Forward([][]int32{{1, 2}}, nil, true); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	s2.Close()
	s.Close()
	s.Close()
}

func TestTokenizerTextPath(t *testing.T) {
	dir := os.Getenv("PYFFI_TEST_TEXT_MODEL")
	if dir == "" {
		t.Skip("PYFFI_TEST_TEXT_MODEL is not set")
	}
	tok, err := LoadTokenizer(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	ids, err := tok.Encode("The Python", true, false)
	if err != nil || fmt.Sprint(ids) != "[0 555 459]" {
		t.Fatalf("Encode = %v, %v", ids, err)
	}
	text := "naïve café 🦙 and <s> text"
	ids, err = tok.Encode(text, false, false)
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := tok.Decode(ids, true)
	if err != nil || decoded != text {
		t.Fatalf("Decode = %q, %v", decoded, err)
	}
	d, err := tok.NewDetokenizer(true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	streamed := ""
	for _, id := range ids {
		piece, err := d.Feed(id)
		if err != nil {
			t.Fatal(err)
		}
		streamed += piece
	}
	rest, err := d.Flush()
	if err != nil {
		t.Fatal(err)
	}
	if streamed+rest != text {
		t.Fatalf("streamed %q, want %q", streamed+rest, text)
	}
	// A NUL byte is text like any other (the length is explicit), and a long
	// text makes Decode and Feed retry with the size the engine asked for.
	for _, text := range []string{"a\x00b", strings.Repeat("The Python interpreter. ", 40)} {
		ids, err := tok.Encode(text, false, false)
		if err != nil {
			t.Fatal(err)
		}
		if decoded, err := tok.Decode(ids, true); err != nil || decoded != text {
			t.Fatalf("Decode = %q, %v; want %q", decoded, err, text)
		}
	}
	_, err = LoadTokenizer(dir + "/missing")
	var perr *Error
	if !errors.As(err, &perr) || perr.Status != StatusNotFound {
		t.Fatalf("missing tokenizer: got %v", err)
	}
}

func TestGenerationStepsGiveGenerateTokens(t *testing.T) {
	_, s := open(t)
	want, _, err := s.Generate([]int32{1, 2, 3}, 10, sampling(), nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.Start([]int32{1, 2, 3}, 10, sampling())
	if err != nil {
		t.Fatal(err)
	}
	var got []int32
	for {
		tok, ok, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, tok)
	}
	g.Close()
	if !slices.Equal(got, want) || g.Finish() != FinishLength {
		t.Fatalf("steps gave %v (%s), Generate %v (length)", got, g.Finish(), want)
	}
	if _, _, err := g.Next(); err == nil {
		t.Error("Next on a closed generation: no error")
	}

	// Another call on the session between two tokens ends it with an error.
	g, err = s.Start([]int32{1, 2, 3}, 10, sampling())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if tok, ok, err := g.Next(); err != nil || !ok || tok != want[0] {
		t.Fatalf("first step: %d %v %v, want %d", tok, ok, err, want[0])
	}
	if _, err := s.Forward([][]int32{{1, 7}}, nil, true); err != nil {
		t.Fatal(err)
	}
	_, ok, err := g.Next()
	wantStatus(t, err, 1)
	if ok || g.Finish() != FinishCancelled || !strings.Contains(err.Error(), "another call") {
		t.Errorf("after another call: ok %v, finish %s, error %v", ok, g.Finish(), err)
	}
	_, err = s.Start(nil, 4, sampling())
	wantStatus(t, err, 1)
}
