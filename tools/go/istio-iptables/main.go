// Command istio-iptables is upstream Istio's istio-iptables command (the one pilot-agent exposes
// as `pilot-agent istio-iptables`), built stand-alone as the rule engine's test oracle.
// Only the wiring is ours; everything it does is istio.io/istio/tools/istio-iptables/pkg/cmd.
package main

import (
	"os"

	"istio.io/istio/pkg/log"
	iptables "istio.io/istio/tools/istio-iptables/pkg/cmd"
)

func main() {
	opts := log.DefaultOptions()
	cmd := iptables.GetCommand(opts)
	opts.AttachCobraFlags(cmd)
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
