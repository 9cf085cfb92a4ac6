package statuspage

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"time"
)

// ArchiveTarget is one archive target as the archive milter's /archive/status
// reports it (the fields of ctl.ArchiveTargetStatus the page shows; decoded
// from its JSON, since ctl imports the service this page is part of).
type ArchiveTarget struct {
	Name           string    `json:"name"`
	Type           string    `json:"type"`
	BacklogRecords int64     `json:"backlog_records"`
	OldestUnsent   time.Time `json:"oldest_unsent"`
	LastError      string    `json:"last_error"`
	Failing        bool      `json:"failing"`
	DeadLetters    int64     `json:"dead_letters"`
}

// ArchiveFromHandler reads the archive milter's targets by calling its
// /archive/status handler in process (it answers from memory), so the page
// needs no hook in the archive milter.
func ArchiveFromHandler(h http.Handler) func() ([]ArchiveTarget, bool) {
	return func() ([]ArchiveTarget, bool) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/archive/status", nil))
		if rec.Code != http.StatusOK {
			return nil, false
		}
		var st struct {
			Targets []ArchiveTarget `json:"targets"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
			return nil, false
		}
		return st.Targets, true
	}
}
