package main

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// commandLine is one command line in the top-level usage: two spaces, the
// command (one word, or "bench milter"), two or more spaces, its summary.
var commandLine = regexp.MustCompile(`^  ([a-z][a-z-]*(?: [a-z]+)?)\s{2,}\S`)

// ctlLine is one line of `geomilter ctl --help`'s command list; its first word
// is a ctl command with its own --help.
var ctlLine = regexp.MustCompile(`^  ([a-z][a-z-]*)\s`)

// manPage writes geomilter(8) in man(7) roff: a fixed head (synopsis, files,
// the unit) and, as COMMANDS, the --help text of every command the binary's
// usage lists and every ctl command, so a new command or flag appears here at
// the next build.
func manPage(bin, version string, date time.Time) ([]byte, error) {
	usage, err := helpOf(bin, "--help")
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".TH GEOMILTER 8 %q %q \"System Administration\"\n", date.Format("2006-01-02"), "geomilter "+version)
	b.WriteString(`.SH NAME
geomilter \- Postfix milters for multi-site mail gateways
.SH SYNOPSIS
.B geomilter
.I command
.RI [ flags ]
.br
.B systemctl enable \-\-now geomilter@access
.SH DESCRIPTION
One binary holds four milters (access, policy, archive, encrypt), each run as
its own process and systemd instance of
.BR geomilter@.service ,
and the operator commands. Postfix reaches the packaged milters at
.I /var/spool/postfix/geomilter/<milter>.sock
(with a chrooted Postfix: unix:geomilter/<milter>.sock; see
.IR /usr/share/doc/geomilter/main.cf.snippet.chroot ).
The sections below are the program's own \-\-help texts.
.PP
.nf
`)
	b.WriteString(roffLines(usage))
	b.WriteString(".fi\n.SH COMMANDS\n")
	for _, cmd := range commands(usage, commandLine) {
		if cmd == "help" {
			continue
		}
		args := append(strings.Fields(cmd), "--help")
		text, err := helpOf(bin, args...)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, ".SS \"geomilter %s\"\n.nf\n%s.fi\n", cmd, roffLines(text))
		if cmd != "ctl" {
			continue
		}
		for _, sub := range commands(sectionAfter(text, "commands:"), ctlLine) {
			subText, err := helpOf(bin, "ctl", sub, "--help")
			if err != nil || subText == text {
				continue // no help of its own: ctl's text above covers it
			}
			fmt.Fprintf(&b, ".SS \"geomilter ctl %s\"\n.nf\n%s.fi\n", sub, roffLines(subText))
		}
	}
	b.WriteString(`.SH FILES
.TP
.I /etc/geomilter/geomilter.yaml
The host config (a conffile: upgrades keep edits). Check it with
.BR "geomilter check-config" .
.TP
.I /etc/geomilter/rules.yaml
The rules in standalone mode (no Redis); re-read on
.BR "systemctl reload geomilter@<milter>" .
.TP
.I /lib/systemd/system/geomilter@.service
The unit; the instance name is the milter.
.TP
.I /var/lib/geomilter
State: the saved rules snapshot. Kept on remove, deleted on purge.
.TP
.I /var/spool/geomilter
The trail buffer and the archive journal. Kept on remove, deleted on purge.
.TP
.I /var/log/geomilter
The trail file sink. Kept on remove, deleted on purge.
.TP
.I /var/spool/postfix/geomilter
The sockets, inside Postfix's chroot (geomilter:postfix, mode 2750; sockets 0660).
.SH SEE ALSO
.BR postfix (1),
.BR postconf (5),
.BR systemctl (1),
.I /usr/share/doc/geomilter/
`)
	return []byte(b.String()), nil
}

// commands returns the first capture of re on each line of text, in order,
// each once.
func commands(text string, re *regexp.Regexp) []string {
	var out []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil || seen[m[1]] {
			continue
		}
		seen[m[1]] = true
		out = append(out, m[1])
	}
	return out
}

// sectionAfter returns the lines after the line equal to heading, up to the
// next empty line.
func sectionAfter(text, heading string) string {
	_, rest, ok := strings.Cut(text, "\n"+heading+"\n")
	if !ok {
		return ""
	}
	sect, _, _ := strings.Cut(rest, "\n\n")
	return sect
}

// roffLines escapes text for a .nf block: backslashes as \e, a line starting
// with . or ' guarded by \& so roff does not read it as a request, and
// non-ASCII characters (… —) as \[uXXXX] so the page needs no preconv.
func roffLines(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		line = strings.ReplaceAll(line, `\`, `\e`)
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			line = `\&` + line
		}
		for _, r := range line {
			if r < 0x80 {
				b.WriteRune(r)
			} else {
				fmt.Fprintf(&b, `\[u%04X]`, r)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}
