package ncdevmem

import (
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// getopt parses args as glibc's getopt(3) does with optstring: options may
// be clustered (-lv7), an option's argument attached (-v7) or the next word
// (-v 7), non-option words are set aside and returned (GNU permutation),
// and "--" ends the options. It calls opt for each option; an unknown option
// or a missing argument is reported on w as glibc does and passed to opt as
// '?'.
func getopt(args []string, optstring string, opt func(c byte, arg string), w io.Writer) (rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			rest = append(rest, a)
			continue
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			k := strings.IndexByte(optstring, c)
			if k < 0 || c == ':' {
				fmt.Fprintf(w, "%s: invalid option -- '%c'\n", ncPrefix, c)
				opt('?', "")
				continue
			}
			if k+1 >= len(optstring) || optstring[k+1] != ':' {
				opt(c, "")
				continue
			}
			switch {
			case j+1 < len(a):
				opt(c, a[j+1:])
			case i+1 < len(args):
				i++
				opt(c, args[i])
			default:
				fmt.Fprintf(w, "%s: option requires an argument -- '%c'\n", ncPrefix, c)
				opt('?', "")
			}
			break
		}
	}
	return rest
}

// atoi is C's atoi: leading blanks, a sign, then digits up to the first
// non-digit; anything else gives 0.
func atoi(s string) int {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	n := 0
	for i := 0; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		if n < 1<<40 {
			n = n*10 + int(s[i]-'0')
		}
	}
	if neg {
		return -n
	}
	return n
}

var strtoulRE = regexp.MustCompile(`^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)`)

// strtoul is C's strtoul(s, NULL, 0): decimal, 0x hex or 0 octal, the
// longest valid prefix, a minus sign negating modulo 2^64; ok is false on
// overflow (ERANGE).
func strtoul(s string) (v uint64, ok bool) {
	m := strtoulRE.FindStringSubmatch(s)
	if m == nil {
		return 0, true
	}
	v, err := strconv.ParseUint(m[2], 0, 64)
	if err != nil {
		return 0, false
	}
	if m[1] == "-" {
		v = -v
	}
	return v, true
}
