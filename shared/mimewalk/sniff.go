package mimewalk

import (
	"bytes"
	"mime"
	"net/http"
)

// SniffLen is how many first bytes Sniff looks at (http.DetectContentType
// reads 512).
const SniffLen = 512

// magic numbers of the types a mail scanner cares most about, checked before
// http.DetectContentType (which knows none of the executables).
var magics = []struct {
	prefix []byte
	kind   string
}{
	{[]byte("MZ"), "exe"},                               // DOS/PE executable
	{[]byte("\x7fELF"), "elf"},                          // ELF executable
	{[]byte("\xfe\xed\xfa\xce"), "macho"},               // Mach-O 32-bit
	{[]byte("\xfe\xed\xfa\xcf"), "macho"},               // Mach-O 64-bit
	{[]byte("\xce\xfa\xed\xfe"), "macho"},               // Mach-O 32-bit, little endian
	{[]byte("\xcf\xfa\xed\xfe"), "macho"},               // Mach-O 64-bit, little endian
	{[]byte("\xca\xfe\xba\xbe"), "macho"},               // Mach-O universal (also a Java class file)
	{[]byte("PK\x03\x04"), "zip"},                       // local file header (also docx, xlsx, jar, apk)
	{[]byte("PK\x05\x06"), "zip"},                       // empty archive
	{[]byte("PK\x07\x08"), "zip"},                       // spanned archive
	{[]byte("%PDF-"), "pdf"},                            //
	{[]byte("#!"), "script"},                            // interpreter line
	{[]byte("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), "ole"}, // OLE2 compound file (doc, xls, msi)
	{[]byte("Rar!\x1a\x07"), "rar"},                     // RAR 1.5 to 5
	{[]byte("7z\xbc\xaf\x27\x1c"), "7z"},                //
	{[]byte("\x1f\x8b"), "gzip"},                        //
}

// Sniff names the type of content from its first bytes (up to SniffLen are
// used): "exe" (MZ/PE), "elf", "macho", "zip", "pdf", "script" (#!), "ole"
// (D0CF11E0), "rar", "7z", "gzip", else the media type http.DetectContentType
// finds, without parameters ("text/plain", "application/octet-stream", …).
// A file name cannot hide what these bytes are: "invoice.pdf.exe" or an
// executable renamed to "invoice.pdf" both sniff as "exe".
func Sniff(first []byte) string {
	if len(first) > SniffLen {
		first = first[:SniffLen]
	}
	for _, m := range magics {
		if bytes.HasPrefix(first, m.prefix) {
			return m.kind
		}
	}
	t := http.DetectContentType(first)
	if mt, _, err := mime.ParseMediaType(t); err == nil {
		return mt
	}
	return t
}
