// kstatus reads Kubernetes objects (a JSON list or one object) on stdin and prints, for each, the status
// that Flux and cli-utils compute: {"name": ..., "status": "InProgress|Current|Failed|...", "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var doc map[string]interface{}
	// apimachinery's decoder keeps integers int64 (encoding/json would make metadata.generation a float64,
	// which unstructured's accessors refuse)
	if err := utiljson.Unmarshal(raw, &doc); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: stdin is not a JSON object:", err)
		os.Exit(2)
	}
	items := []interface{}{doc}
	if list, ok := doc["items"].([]interface{}); ok {
		items = list
	}
	out := []map[string]string{}
	for _, item := range items {
		obj, ok := item.(map[string]interface{})
		if !ok {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		out = append(out, map[string]string{"name": u.GetName(), "status": res.Status.String(), "message": res.Message})
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}
