package statuspage

import (
	"html/template"
	"time"
)

// pageTmpl is the whole page: html/template escapes every value (site names,
// addresses and error texts come from config and from Redis). Inline CSS
// only; the meta refresh reloads it every 10 s.
var pageTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"clock": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"hm":    func(t time.Time) string { return t.UTC().Format("15:04") },
	"since": func(now, t time.Time) string { return ago(now.Sub(t)) },
	"count": func(m Minute, a string) uint64 { return m.Counts[a] },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10">
<title>geomilter {{.Milter}} · {{.Site}}/{{.Host}} · {{.State}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#1b1f24;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.2em 0}th,td{padding:.25em .7em;border:1px solid #d0d7de;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600}.bad{background:#ffebe9;color:#a40e26;font-weight:600}.warn{background:#fff8c5;color:#7d4e00}
.state{display:inline-block;padding:.1em .6em;border-radius:.3em}.muted{color:#656d76}
</style></head>
<body>
<h1>geomilter {{.Milter}} — site {{.Site}}, host {{.Host}}</h1>
<p>State: <span id="state" class="state {{if eq .State "up"}}ok{{else if eq .State "down"}}bad{{else}}warn{{end}}">{{.State}}</span>
 · {{.Mode}} mode · {{clock .Now}} <span class="muted">(refreshes every 10 s)</span></p>
{{if .Sites}}
<h2>Sites and replication (as this host reads them)</h2>
<table id="sites"><tr><th>Site</th><th>Instance</th><th>Address</th><th>State</th><th>Since</th><th>Link</th><th>Last IO</th><th>Rules version</th><th>Detail</th></tr>
{{range .Sites}}<tr class="site{{if .Bad}} bad{{end}}" data-site="{{.Site}}" data-state="{{.State}}">
<td>{{.Site}}{{if .Own}} (this site){{end}}</td><td>{{.Role}}</td><td>{{.Addr}}</td>
<td>{{if .Bad}}{{.State}}{{else}}<span class="ok">{{.State}}</span>{{end}}</td>
<td>{{if not .Since.IsZero}}{{clock .Since}} ({{since $.Now .Since}} ago){{end}}</td>
<td>{{.Link}}</td><td>{{.LastIO}}</td><td>{{.Version}}{{if .RulesStale}} (last known){{end}}</td><td>{{.Detail}}</td></tr>
{{end}}</table>
{{end}}
<h2>Rules snapshot</h2>
<table id="rules"><tr><th>Source</th><th>Version</th><th>Rules</th><th>Tenants</th><th>Verified</th><th>Problems</th></tr>
<tr{{if or .Rules.Stale .Rules.LastError}} class="warn"{{end}}><td>{{.Rules.Source}}</td><td>{{.Rules.Version}}</td><td class="n">{{.Rules.Rules}}</td><td class="n">{{.Rules.Tenants}}</td>
<td>{{if .Rules.Age}}{{.Rules.Age}} ago{{end}}</td>
<td>{{if .Rules.Stale}}last known rules of {{range $i, $s := .Rules.Stale}}{{if $i}}, {{end}}{{$s}}{{end}} (not answering). {{end}}{{if .Rules.Invalid}}{{.Rules.Invalid}} invalid documents skipped. {{end}}{{.Rules.LastError}}</td></tr>
</table>
<h2>Backlog</h2>
<table id="backlog"><tr><th>Kind</th><th>Name</th><th>Waiting</th><th>Oldest</th><th>Detail</th></tr>
{{range .Sinks}}<tr{{if .Pending}} class="warn"{{end}}><td>trail sink</td><td>{{.Name}}</td><td class="n">{{.Pending}}</td><td>{{.Oldest}}</td><td></td></tr>
{{end}}{{range .Targets}}<tr class="{{if .Failing}}bad{{else if .Pending}}warn{{end}}"><td>archive target ({{.Type}})</td><td>{{.Name}}</td><td class="n">{{.Pending}}</td><td>{{.Oldest}}</td><td>{{if .Failing}}failing: {{end}}{{.Detail}}</td></tr>
{{end}}</table>
<h2>Decisions per minute</h2>
{{if .Actions}}<table id="decisions"><tr><th>UTC minute</th>{{range $i, $m := .Minutes}}<th>{{hm $m.Start}}{{if eq $i 0}} (so far){{end}}</th>{{end}}</tr>
{{range $a := .Actions}}<tr><th>{{$a}}</th>{{range $.Minutes}}<td class="n">{{count . $a}}</td>{{end}}</tr>
{{end}}<tr><th>total</th>{{range .Minutes}}<td class="n">{{.Total}}</td>{{end}}</tr>
</table>{{else}}<p id="decisions" class="muted">No decisions in the last {{len .Minutes}} minutes.</p>{{end}}
<h2>Checks and degraded flags</h2>
<table id="checks"><tr><th>Check</th><th>State</th><th>Detail</th></tr>
{{range .Checks}}<tr class="{{if .Bad}}bad{{else if .Warn}}warn{{end}}"><td>{{.Name}}</td><td>{{.State}}</td><td>{{.Text}}</td></tr>
{{end}}</table>
{{if .Breakers}}<h2>Circuit breakers not closed</h2><ul id="breakers">{{range .Breakers}}<li class="bad">{{.}}</li>{{end}}</ul>{{end}}
</body></html>
`))
