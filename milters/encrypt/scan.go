package encrypt

import (
	"fmt"
	"io"

	"github.com/geomilter/geomilter/milters/encrypt/detect"
	"github.com/geomilter/geomilter/shared/mimewalk"
)

// scan feeds the message's decoded text parts and every part's file name
// to one detect.Scanner, each as its own piece (Scanner.Break between
// them, so no number joins across parts), and returns the findings. The
// walk streams: memory is the walker's buffers and the scanner's state,
// whatever the message size. Attachments other than text are not read,
// only named: what they hold is the gateway's to judge, not a milter's.
func scan(d *detect.Detector, msg io.Reader, lim mimewalk.Limits) (detect.Findings, mimewalk.Result, error) {
	s := d.Scanner()
	res, err := mimewalk.Walk(msg, lim, func(p *mimewalk.Part, body io.Reader) error {
		if p.FileName != "" {
			io.WriteString(s, p.FileName)
			s.Break()
		}
		if p.Text && !p.Attachment {
			if _, err := io.Copy(s, mimewalk.TextReader(p, body)); err != nil {
				return fmt.Errorf("part %q: %w", p.Path, err)
			}
			s.Break()
		}
		return nil
	})
	return s.Close(), res, err
}
