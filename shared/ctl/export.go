package ctl

import (
	"bytes"
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/geomilter/geomilter/shared/rules"
)

// exportYAML writes set as a rules file. Each document's JSON (the same keys
// as the file) is read as YAML, which keeps its key order, then restyled:
// block mappings, lists of plain values on one line.
func exportYAML(set *rules.Set, header string) ([]byte, error) {
	docs, err := set.Docs()
	if err != nil {
		return nil, err
	}
	tenants := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	rulesSeq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	signing := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	for _, d := range docs {
		var n yaml.Node
		if err := yaml.Unmarshal(d.Body, &n); err != nil {
			return nil, fmt.Errorf("document %q: %w", d.ID, err)
		}
		if n.Kind != yaml.DocumentNode || len(n.Content) != 1 {
			return nil, fmt.Errorf("document %q: not one object", d.ID)
		}
		body := n.Content[0]
		restyle(body)
		if rules.IsTenantDoc(d.ID) {
			tenants.Content = append(tenants.Content, body)
		} else if rules.IsSigningDoc(d.ID) {
			signing.Content = append(signing.Content, body)
		} else {
			rulesSeq.Content = append(rulesSeq.Content, body)
		}
	}
	if len(tenants.Content) == 0 {
		tenants.Style = yaml.FlowStyle // "tenants: []"
	}
	if len(rulesSeq.Content) == 0 {
		rulesSeq.Style = yaml.FlowStyle
	}
	root := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", HeadComment: header, Content: []*yaml.Node{
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "tenants"}, tenants,
		{Kind: yaml.ScalarNode, Tag: "!!str", Value: "rules"}, rulesSeq,
	}}
	if len(signing.Content) > 0 {
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "signing"}, signing)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// restyle drops the JSON styles: scalars become plain where YAML allows it
// (the encoder quotes what would otherwise read as another type), mappings
// become blocks, and sequences of scalars stay on one line.
func restyle(n *yaml.Node) {
	switch n.Kind {
	case yaml.ScalarNode:
		n.Style = 0
	case yaml.MappingNode:
		n.Style = 0
		for _, c := range n.Content {
			restyle(c)
		}
	case yaml.SequenceNode:
		flat := true
		for _, c := range n.Content {
			restyle(c)
			flat = flat && c.Kind == yaml.ScalarNode
		}
		if flat {
			n.Style = yaml.FlowStyle
		} else {
			n.Style = 0
		}
	}
}
