package config

import "github.com/geomilter/geomilter/shared/yamlconf"

// CheckHostUnder is CheckHost with every path looked at under root (a test
// host in a temporary directory); messages show the paths as configured.
func CheckHostUnder(cfg *Config, root string) yamlconf.Problems {
	h := &hostChecker{cfg: cfg, root: root}
	return h.run("", true)
}

// CheckStartUnder is CheckStart under root.
func CheckStartUnder(cfg *Config, milter, root string) yamlconf.Problems {
	h := &hostChecker{cfg: cfg, root: root}
	return h.run(milter, false)
}
