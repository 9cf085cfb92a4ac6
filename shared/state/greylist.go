package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// greyKey hashes the triplet so keys stay short whatever the addresses.
func greyKey(site, key string) string {
	sum := sha256.Sum256([]byte(key))
	return sitePrefix(site) + "gl:" + hex.EncodeToString(sum[:16])
}

func setKey(site, name string) string { return sitePrefix(site) + "set:" + name }

// GreylistSeen records a sighting of the triplet key at this site (the
// first sighting sets first_seen; the entry expires ttl after it unless
// GreylistPass extends it) and returns the merged view over all sites: the
// earliest first sighting anywhere, and whether it passed anywhere. Peers
// that do not answer are left out; an unavailable own primary is an error
// wrapping ErrUnavailable.
func (s *Store) GreylistSeen(ctx context.Context, key string, ttl time.Duration) (firstSeen time.Time, passed bool, err error) {
	if ttl < time.Millisecond {
		return time.Time{}, false, fmt.Errorf("state: greylist seen: ttl %v: must be at least 1ms", ttl)
	}
	now := s.now().UnixMilli()
	entries := make([]GreyEntry, len(s.all))
	var ownErr error
	s.fanOut(func(i int, in *instance) {
		k := greyKey(in.site, key)
		err := in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
			var get *redis.SliceCmd
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
				if i == 0 {
					p.HSetNX(ctx, k, "first_seen", now)
					p.HSetNX(ctx, k, "passed", 0)
					p.Do(ctx, "pexpire", k, ttl.Milliseconds(), "nx")
				}
				get = p.HMGet(ctx, k, "first_seen", "passed")
				return nil
			})
			if err != nil {
				return err
			}
			entries[i] = greyEntry(get.Val())
			return nil
		})
		if i == 0 {
			ownErr = err
		}
	})
	if ownErr != nil {
		return time.Time{}, false, fmt.Errorf("state: greylist seen: %w", ownErr)
	}
	firstSeen, passed, _ = MergeGreylist(entries)
	return firstSeen, passed, nil
}

func greyEntry(vals []any) GreyEntry {
	if len(vals) != 2 {
		return GreyEntry{}
	}
	fs, ok := vals[0].(string)
	if !ok {
		return GreyEntry{}
	}
	ms, err := strconv.ParseInt(fs, 10, 64)
	if err != nil {
		return GreyEntry{}
	}
	p, _ := vals[1].(string)
	return GreyEntry{Present: true, FirstSeen: ms, Passed: p == "1"}
}

// GreylistPass marks the triplet passed at this site and keeps it for ttl
// from now.
func (s *Store) GreylistPass(ctx context.Context, key string, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("state: greylist pass: ttl %v: must be at least 1ms", ttl)
	}
	now := s.now().UnixMilli()
	k := greyKey(s.site, key)
	err := s.own.call(ctx, s.own.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.HSetNX(ctx, k, "first_seen", now)
			p.HSet(ctx, k, "passed", 1)
			p.PExpire(ctx, k, ttl)
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("state: greylist pass: %w", err)
	}
	return nil
}

// setAddScript adds a member with its own expiry (sorted-set score, Unix ms,
// "+inf" for never), prunes expired members, and keeps the key alive exactly
// as long as its longest-lived member.
var setAddScript = redis.NewScript(`
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local top = redis.call('ZRANGE', KEYS[1], 0, 0, 'REV', 'WITHSCORES')
if top[2] == nil then return 0 end
if top[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], top[2])
end
return 1
`)

// SetAdd adds member to this site's set name for ttl (0 = no expiry). A
// member's expiry only ever moves later.
func (s *Store) SetAdd(ctx context.Context, name, member string, ttl time.Duration) error {
	now := s.now().UnixMilli()
	expiry := "+inf"
	if ttl > 0 {
		expiry = strconv.FormatInt(now+ttl.Milliseconds(), 10)
	}
	err := s.own.call(ctx, s.own.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
		return setAddScript.Run(ctx, c, []string{setKey(s.site, name)}, member, expiry, now).Err()
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("state: set add %s: %w", name, err)
	}
	return nil
}

// SetHas reports whether member is in set name at any site, unexpired.
// Sites that do not answer are left out; the error (wrapping
// ErrUnavailable) is returned only when no site had the member and the own
// primary did not answer.
func (s *Store) SetHas(ctx context.Context, name, member string) (bool, error) {
	now := s.now().UnixMilli()
	members := make([]SetMember, len(s.all))
	var ownErr error
	s.fanOut(func(i int, in *instance) {
		err := in.call(ctx, in.fast, s.opts.Timeout, func(ctx context.Context, c *redis.Client) error {
			score, err := c.ZScore(ctx, setKey(in.site, name), member).Result()
			if err == nil {
				members[i] = SetMember{Present: true, Expiry: score}
			}
			return err
		})
		if i == 0 && err != nil && !errors.Is(err, redis.Nil) {
			ownErr = err
		}
	})
	if MergeSet(members, now) {
		return true, nil
	}
	if ownErr != nil {
		return false, fmt.Errorf("state: set has %s: %w", name, ownErr)
	}
	return false, nil
}
