package inline

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// Key is what the store holds for one recipient: an S/MIME certificate, an
// OpenPGP key, or both. Lookup returns only keys usable now.
type Key struct {
	// Address is the address looked up (lower case).
	Address string
	// Cert is the recipient's X.509 certificate (RSA), or nil.
	Cert *x509.Certificate
	// CertFile is the file Cert came from.
	CertFile string
	// PGP is the recipient's OpenPGP public key, or nil.
	PGP *openpgp.Entity
	// PGPFile is the file PGP came from.
	PGPFile string
}

// Has reports whether k can be used with method m.
func (k Key) Has(m Method) bool {
	switch m {
	case SMIME:
		return k.Cert != nil
	case PGP:
		return k.PGP != nil
	}
	return false
}

// StoreOptions tune a KeyStore; the zero value is usable.
type StoreOptions struct {
	// Now is the clock for validity checks; nil means time.Now.
	Now func() time.Time
	// CheckEvery is how often Lookup looks for changed files (a directory
	// scan and one stat per file); 0 means 5 s, negative never (Reload only).
	CheckEvery time.Duration
}

// KeyStore is a directory of recipient keys:
//
//	<dir>/<address>.pem  <dir>/<domain>.pem         tenant ""
//	<dir>/<tenant>/<address>.asc  <dir>/<tenant>/<domain>.asc  …
//
// A .pem file holds an X.509 certificate with an RSA key (the first
// CERTIFICATE block; a chain after it is ignored), a .asc file an armored
// OpenPGP public key. File names are matched case-insensitively; a tenant is
// its directory's name exactly (the tenant id of the rules). A domain file is
// the key for every address of the domain that has no file of its own for
// that method. A tenant sees only its own directory: no fallback to the
// root, so one tenant's keys never encrypt another's mail. Certificates are
// not chain-verified: the directory is the trust decision of whoever fills
// it. Files whose names start with "." and other extensions are ignored.
//
// The store is safe for concurrent use. It re-reads changed files (by size
// and modification time) on Reload and, at most every CheckEvery, on Lookup;
// a bad file is reported by Problems and Reload and skipped, the rest are
// still served.
type KeyStore struct {
	dir        string
	now        func() time.Time
	checkEvery time.Duration

	reload    sync.Mutex // one reload at a time
	snap      atomic.Pointer[snapshot]
	lastCheck atomic.Int64 // unix nanoseconds of the last scan
}

type snapshot struct {
	files    map[string]*keyFile            // by path
	index    map[string]map[string]*keyFile // tenant → "name.ext" (lower case) → file
	problems []error
}

// keyFile is one parsed file, kept with the stat data it was read with.
type keyFile struct {
	path  string
	size  int64
	mtime time.Time
	cert  *x509.Certificate
	pgp   openpgp.EntityList
	err   error
}

// OpenKeyStore opens the key store in dir with default options.
func OpenKeyStore(dir string) (*KeyStore, error) {
	return OpenKeyStoreWith(dir, StoreOptions{})
}

// OpenKeyStoreWith opens the key store in dir. It fails only when dir cannot
// be read; bad key files are listed by Problems.
func OpenKeyStoreWith(dir string, o StoreOptions) (*KeyStore, error) {
	k := &KeyStore{dir: dir, now: o.Now, checkEvery: o.CheckEvery}
	if k.now == nil {
		k.now = time.Now
	}
	if k.checkEvery == 0 {
		k.checkEvery = 5 * time.Second
	}
	k.snap.Store(&snapshot{})
	if _, err := k.scan(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload re-reads the files that changed since the last scan. It returns
// every problem of the store (bad files, expired keys), joined, each naming
// its file; the store serves what is good either way.
func (k *KeyStore) Reload() error {
	probs, err := k.scan()
	if err != nil {
		return err
	}
	return errors.Join(probs...)
}

// Problems lists what is wrong with the store's files as of the last scan.
func (k *KeyStore) Problems() []error {
	return k.snap.Load().problems
}

// Lookup returns the key for addr in tenant's directory: the address's own
// file for each method, else the domain's. Keys not valid now (expired, not
// yet valid, revoked) are left out; false when nothing usable remains.
func (k *KeyStore) Lookup(tenant, addr string) (Key, bool) {
	k.maybeScan()
	if !validTenant(tenant) {
		return Key{}, false
	}
	addr = strings.ToLower(strings.Trim(strings.TrimSpace(addr), "<>"))
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return Key{}, false
	}
	files := k.snap.Load().index[tenant]
	if files == nil {
		return Key{}, false
	}
	now := k.now()
	key := Key{Address: addr}
	for _, name := range []string{addr, addr[at+1:]} {
		if f := files[name+".pem"]; f != nil && key.Cert == nil && certUsable(f.cert, now) == nil {
			key.Cert, key.CertFile = f.cert, f.path
		}
		if f := files[name+".asc"]; f != nil && key.PGP == nil {
			if e := usableEntity(f.pgp, now); e != nil {
				key.PGP, key.PGPFile = e, f.path
			}
		}
	}
	if key.Cert == nil && key.PGP == nil {
		return Key{}, false
	}
	return key, true
}

// validTenant keeps a tenant name inside the store: one path element, not
// hidden. "" is the root.
func validTenant(t string) bool {
	return t == "" || (!strings.ContainsAny(t, `/\`) && !strings.HasPrefix(t, "."))
}

func (k *KeyStore) maybeScan() {
	if k.checkEvery < 0 {
		return
	}
	now := k.now().UnixNano()
	if now-k.lastCheck.Load() < int64(k.checkEvery) {
		return
	}
	// A scan already running serves this lookup from the current snapshot.
	if !k.reload.TryLock() {
		return
	}
	defer k.reload.Unlock()
	_, _ = k.scanLocked() // problems are kept in the snapshot for Problems
}

// scan reads the directory tree, reusing parsed files whose size and
// modification time did not change, and installs the new snapshot.
func (k *KeyStore) scan() ([]error, error) {
	k.reload.Lock()
	defer k.reload.Unlock()
	return k.scanLocked()
}

func (k *KeyStore) scanLocked() ([]error, error) {
	now := k.now()
	k.lastCheck.Store(now.UnixNano())
	old := k.snap.Load()
	next := &snapshot{files: map[string]*keyFile{}, index: map[string]map[string]*keyFile{}}

	top, err := os.ReadDir(k.dir)
	if err != nil {
		return nil, fmt.Errorf("key store %s: %w", k.dir, err)
	}
	type place struct{ tenant, dir string }
	places := []place{{"", k.dir}}
	for _, e := range top {
		if e.IsDir() && validTenant(e.Name()) {
			places = append(places, place{e.Name(), filepath.Join(k.dir, e.Name())})
		}
	}
	for _, pl := range places {
		entries, err := os.ReadDir(pl.dir)
		if err != nil {
			next.problems = append(next.problems, fmt.Errorf("key store %s: %w", pl.dir, err))
			continue
		}
		for _, e := range entries {
			name := e.Name()
			ext := strings.ToLower(filepath.Ext(name))
			if e.IsDir() || strings.HasPrefix(name, ".") || (ext != ".pem" && ext != ".asc") {
				continue
			}
			path := filepath.Join(pl.dir, name)
			info, err := os.Stat(path) // follows symlinks, as the read does
			if err != nil {
				next.problems = append(next.problems, fmt.Errorf("%s: %w", path, err))
				continue
			}
			f := old.files[path]
			if f == nil || f.size != info.Size() || !f.mtime.Equal(info.ModTime()) {
				f = loadKeyFile(path, ext, info)
			}
			next.files[path] = f
			if f.err != nil {
				next.problems = append(next.problems, f.err)
				continue
			}
			if p := expiredProblem(f, now); p != nil {
				next.problems = append(next.problems, p)
			}
			lower := strings.ToLower(name)
			if next.index[pl.tenant] == nil {
				next.index[pl.tenant] = map[string]*keyFile{}
			}
			if prev := next.index[pl.tenant][lower]; prev != nil {
				next.problems = append(next.problems, fmt.Errorf("%s: same name as %s (names are case-insensitive); using %s", path, prev.path, prev.path))
				continue
			}
			next.index[pl.tenant][lower] = f
		}
	}
	k.snap.Store(next)
	return next.problems, nil
}

// loadKeyFile parses one file; a problem is kept in err, naming the file.
func loadKeyFile(path, ext string, info os.FileInfo) *keyFile {
	f := &keyFile{path: path, size: info.Size(), mtime: info.ModTime()}
	data, err := os.ReadFile(path)
	if err != nil {
		f.err = fmt.Errorf("%s: %w", path, err)
		return f
	}
	switch ext {
	case ".pem":
		f.cert, f.err = parseCert(data)
	case ".asc":
		f.pgp, f.err = openpgp.ReadArmoredKeyRing(bytes.NewReader(data))
		if f.err == nil && len(f.pgp) == 0 {
			f.err = errors.New("no OpenPGP key in the file")
		}
	}
	if f.err != nil {
		f.err = fmt.Errorf("%s: %w", path, f.err)
	}
	return f
}

// parseCert reads the first CERTIFICATE block of a PEM file and checks it can
// carry an S/MIME key transport: RSA (the only key transport pkcs7 does) and,
// when the certificate restricts its key usage, keyEncipherment (RFC 8550
// §4.4.2) and emailProtection (RFC 8550 §4.4.4).
func parseCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
			return nil, fmt.Errorf("certificate key is %s, only RSA is supported", c.PublicKeyAlgorithm)
		}
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
			return nil, errors.New("certificate key usage does not allow keyEncipherment")
		}
		if len(c.ExtKeyUsage) > 0 && !hasEKU(c, x509.ExtKeyUsageEmailProtection) && !hasEKU(c, x509.ExtKeyUsageAny) {
			return nil, errors.New("certificate extended key usage does not include emailProtection")
		}
		return c, nil
	}
}

func hasEKU(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, x := range c.ExtKeyUsage {
		if x == u {
			return true
		}
	}
	return false
}

// certUsable says why a certificate cannot be used at now, or nil.
func certUsable(c *x509.Certificate, now time.Time) error {
	switch {
	case c == nil:
		return errors.New("no certificate")
	case now.Before(c.NotBefore):
		return fmt.Errorf("certificate not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	case now.After(c.NotAfter):
		return fmt.Errorf("certificate expired %s", c.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// usableEntity returns the first key of the file with an encryption key that
// is neither expired nor revoked at now (RFC 4880 §5.2.3.6, §5.2.3.15), or nil.
func usableEntity(el openpgp.EntityList, now time.Time) *openpgp.Entity {
	for _, e := range el {
		if _, ok := e.EncryptionKey(now); ok {
			return e
		}
	}
	return nil
}

// expiredProblem reports a parsed file that cannot be used at now, so the
// operator hears of it before a recipient's mail is routed for lack of key.
func expiredProblem(f *keyFile, now time.Time) error {
	if f.cert != nil {
		if err := certUsable(f.cert, now); err != nil {
			return fmt.Errorf("%s: %w", f.path, err)
		}
	}
	if f.pgp != nil && usableEntity(f.pgp, now) == nil {
		return fmt.Errorf("%s: no OpenPGP key valid for encryption (expired, revoked or without an encryption subkey)", f.path)
	}
	return nil
}
