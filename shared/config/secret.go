package config

// TLSConfig is the tls section of a Redis instance. The files are read when a
// client connects (shared/state), not at config load, so a rotated
// certificate or password is picked up on the next reload.
type TLSConfig struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}
