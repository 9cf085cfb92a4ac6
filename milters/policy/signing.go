package policy

import (
	"crypto"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/policy/dkimcheck"
	"github.com/geomilter/geomilter/shared/rules"
)

// Signing is what signing one message needs: d=, s=, the algorithm and the
// key, for the From domain the caller asked about.
type Signing struct {
	Domain    string // d=: the entry's domain (a parent of the From domain with subdomains: true)
	Selector  string // s=
	Algorithm string // dkimcheck.AlgRSASHA256 or dkimcheck.AlgEd25519SHA256, from the key
	Key       crypto.Signer
	// Tenant is the tenant whose outbound mail may be signed with this
	// key (rules.Snapshot.SigningTenant): the caller signs only when the
	// message's relay is that tenant's; "" means any outbound mail.
	Tenant string
}

// Keyring bounds and pacing.
const (
	// maxCachedKeys bounds the keys held: one per key file in the rules,
	// and files the rules no longer name age out.
	maxCachedKeys = 4096
	// keyLogEvery paces the log line about one unusable key file: a
	// broken key fails every outbound message of its domain, and one line
	// a minute says so without flooding the log.
	keyLogEvery = time.Minute
)

// keyring reads the private keys named by the rules' signing entries and
// keeps them in memory (never anywhere else: the rules, Redis and the saved
// snapshot hold the file's path only).
//
// A key is read at its first use and kept as long as its file is the same
// (same inode, size, modification time and mode; checked with one stat per
// signature), so an admin rotating a key — a new file under the same path,
// or a new path with a new selector in the rules — needs no restart: the
// next message signs with the new key. A file that cannot be used is an
// error for the caller (the policy milter records it and lets the message
// through unsigned; signing never fails mail) and is logged, naming the
// file, once a minute per path; the key bytes are never logged.
//
// Key files must be readable by the service and not readable by others:
// dkimcheck.LoadKey refuses a file others may read or anyone but its owner
// may write (mode & 0o026, OpenDKIM's RequireSafeKeys); 0600, or 0640 with
// the service's group, is right.
type keyring struct {
	log     zerolog.Logger
	now     func() time.Time
	maxKeys int

	mu     sync.Mutex
	keys   map[string]*cachedKey // by path
	logged map[string]time.Time  // path -> last log line about it
}

// cachedKey is one file's key, or why it is unusable, as of one version of
// the file (a broken file is not re-parsed for every message).
type cachedKey struct {
	fi   fs.FileInfo
	key  crypto.Signer
	algo string
	err  error
	used time.Time
}

func newKeyring(log zerolog.Logger) *keyring {
	return &keyring{
		log:     log,
		now:     time.Now,
		maxKeys: maxCachedKeys,
		keys:    make(map[string]*cachedKey),
		logged:  make(map[string]time.Time),
	}
}

// Signer returns what signs mail from domain (the From domain) under the
// snapshot's signing entries; nil, nil when no entry covers it. An error
// means an entry exists but its key cannot be used (missing, unreadable,
// unsafe mode, not a key, not of the entry's algorithm): do not sign.
func (k *keyring) Signer(snap *rules.Snapshot, domain string) (*Signing, error) {
	if snap == nil {
		return nil, nil
	}
	g := snap.SigningFor(domain)
	if g == nil {
		return nil, nil
	}
	key, algo, err := k.load(g.KeyFile)
	if err == nil && g.Algorithm != "" && algo != g.Algorithm {
		err = fmt.Errorf("dkim key %s is %s, but the signing entry for %s says algorithm %s", g.KeyFile, algo, g.Domain, g.Algorithm)
		k.logProblem(g.KeyFile, err)
	}
	if err != nil {
		return nil, fmt.Errorf("dkim signing for %s (selector %s): %w", g.Domain, g.Selector, err)
	}
	return &Signing{Domain: g.Domain, Selector: g.Selector, Algorithm: algo, Key: key, Tenant: snap.SigningTenant(g)}, nil
}

// load returns the key in path, reading the file again when it changed.
func (k *keyring) load(path string) (crypto.Signer, string, error) {
	fi, statErr := os.Stat(path)
	now := k.now()
	k.mu.Lock()
	c := k.keys[path]
	if statErr == nil && c != nil && sameFile(c.fi, fi) {
		c.used = now
		k.mu.Unlock()
		if c.err != nil {
			k.logProblem(path, c.err)
		}
		return c.key, c.algo, c.err
	}
	k.mu.Unlock()

	if statErr != nil {
		k.forget(path)
		err := fmt.Errorf("dkim key %s: %w", path, unwrapPath(statErr))
		k.logProblem(path, err)
		return nil, "", err
	}
	// Outside the lock: reading and parsing an RSA key takes a while and
	// other domains' messages need not wait for it.
	key, algo, err := dkimcheck.LoadKey(path)
	c = &cachedKey{fi: fi, key: key, algo: algo, err: err, used: now}
	k.mu.Lock()
	if len(k.keys) >= k.maxKeys && k.keys[path] == nil {
		k.evictOldest()
	}
	k.keys[path] = c
	k.mu.Unlock()
	if err != nil {
		k.logProblem(path, err)
		return nil, "", err
	}
	ev := k.log.Info()
	if w := dkimcheck.KeyWarning(key); w != "" {
		ev = k.log.Warn().Str("warning", w)
	}
	ev.Str("key_file", path).Str("algorithm", algo).Time("mtime", fi.ModTime()).Msg("dkim signing key loaded")
	return key, algo, nil
}

// sameFile reports whether b is the same version of the file as a: the
// same inode (a key replaced by rename is a new file), size and
// modification time (one rewritten in place), and mode (a key refused for
// its mode is usable after a chmod, which changes nothing else).
func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime()) && a.Mode() == b.Mode()
}

// unwrapPath drops *fs.PathError's own "stat PATH:" so the path is named
// once.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func (k *keyring) forget(path string) {
	k.mu.Lock()
	delete(k.keys, path)
	k.mu.Unlock()
}

// evictOldest drops the least recently used key. Called with mu held, and
// only when the cache is full: a linear scan is cheaper than keeping an
// order for a cache that rarely fills.
func (k *keyring) evictOldest() {
	var oldest string
	var at time.Time
	for p, c := range k.keys {
		if oldest == "" || c.used.Before(at) {
			oldest, at = p, c.used
		}
	}
	delete(k.keys, oldest)
}

// logProblem logs err about the key file path, at most once per
// keyLogEvery per path. err names the file and says what is wrong; no
// error from dkimcheck.LoadKey carries key material.
func (k *keyring) logProblem(path string, err error) {
	now := k.now()
	k.mu.Lock()
	last, seen := k.logged[path]
	if seen && now.Sub(last) < keyLogEvery {
		k.mu.Unlock()
		return
	}
	if len(k.logged) >= k.maxKeys {
		clear(k.logged) // a flood of paths costs at most one extra line each
	}
	k.logged[path] = now
	k.mu.Unlock()
	k.log.Error().Err(err).Str("key_file", path).Msg("dkim signing key unusable; mail from its domain goes out unsigned")
}
