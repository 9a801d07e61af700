// Command pyffi-example loads a model folder, runs a forward pass and a
// seeded, streamed generate through the pyffi wrapper, and shows how an error
// comes back.
//
//	go build -o pyffi-example . && ./pyffi-example MODEL_DIR
//
// The output format is shared with examples/c; the test suite compares both
// with Python's results for the same model and seed.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"

	"pyffi/examples/go/pyffi"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s MODEL_DIR\n", os.Args[0])
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	err := run(os.Args[1], out)
	// Flush first so stdout holds every line printed before a failure.
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error", err) // "error NAME: message" for an *pyffi.Error
		os.Exit(1)
	}
}

func run(modelDir string, out *bufio.Writer) error {
	fmt.Fprintln(out, "abi", pyffi.ABIVersion())

	model, err := pyffi.LoadModel(modelDir)
	if err != nil {
		return err
	}
	defer model.Close()
	vocab := model.VocabSize()
	fmt.Fprintln(out, "vocab", vocab)

	session, err := model.NewSession(128, 0)
	if err != nil {
		return err
	}
	defer session.Close()

	// lastOnly gives [1][vocab]. 9 significant digits round-trip a float32,
	// so the test can compare with Python exactly.
	logits, err := session.Forward([][]int32{{1, 2, 3, 4, 5}}, nil, true)
	if err != nil {
		return err
	}
	out.WriteString("logits")
	for _, v := range logits {
		out.WriteString(" " + strconv.FormatFloat(float64(v), 'g', 9, 32))
	}
	out.WriteString("\n")

	// Seeded sampling, streamed through a callback.
	p := pyffi.DefaultSamplingParams()
	p.Temperature, p.TopK, p.TopP, p.MinP = 0.8, 40, 0.95, 0.05
	p.RepeatPenalty, p.RepeatLastN = 1.1, 64
	p.Seed, p.StopTokens, p.StopAtEOS = 1234, nil, false
	var streamed []int32
	tokens, finish, err := session.Generate([]int32{1, 2, 3}, 24, p, func(t int32) bool {
		streamed = append(streamed, t)
		return true
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "tokens"+joinTokens(tokens))
	fmt.Fprintln(out, "streamed"+joinTokens(streamed))
	fmt.Fprintln(out, "finish", finish)

	// A token id equal to the vocab size is out of range: the error comes
	// back as a *pyffi.Error with the status and message of that call.
	_, err = session.Forward([][]int32{{int32(vocab)}}, nil, true)
	var perr *pyffi.Error
	if !errors.As(err, &perr) {
		return fmt.Errorf("forward of token %d: want a *pyffi.Error, got %v", vocab, err)
	}
	fmt.Fprintln(out, "error_check", perr.Name, perr.Message)
	if perr.Status != pyffi.StatusOutOfRange {
		return fmt.Errorf("forward of token %d: want PYFFI_OUT_OF_RANGE, got %w", vocab, err)
	}
	return textDemo(modelDir, session, out)
}

// textDemo runs text in, text out when the model folder has a tokenizer:
// encode, generate greedily with a callback that feeds a detokenizer, print.
func textDemo(modelDir string, session *pyffi.Session, out *bufio.Writer) error {
	tok, err := pyffi.LoadTokenizer(modelDir)
	var perr *pyffi.Error
	if errors.As(err, &perr) && perr.Status == pyffi.StatusNotFound {
		fmt.Fprintln(out, "tokenizer none")
		return nil
	}
	if err != nil {
		return err
	}
	defer tok.Close()
	ids, err := tok.Encode("The Python", true, false)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "prompt_ids"+joinTokens(ids))
	detok, err := tok.NewDetokenizer(true)
	if err != nil {
		return err
	}
	defer detok.Close()
	var text []byte
	var feedErr error
	p := pyffi.DefaultSamplingParams()
	p.Temperature = 0
	p.StopAtEOS = true
	_, _, err = session.Generate(ids, 24, p, func(t int32) bool {
		piece, err := detok.Feed(t)
		if err != nil {
			feedErr = err
			return false
		}
		text = append(text, piece...)
		return true
	})
	if err != nil {
		return err
	}
	if feedErr != nil {
		return feedErr
	}
	rest, err := detok.Flush()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "completion:\n%s%s\n", text, rest)
	return nil
}

// joinTokens formats tokens as " t1 t2 ...".
func joinTokens(tokens []int32) string {
	var b []byte
	for _, t := range tokens {
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(t), 10)
	}
	return string(b)
}
