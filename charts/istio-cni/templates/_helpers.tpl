{{/*
Names. The DaemonSet is always "<name>-node": the node program's upgrade check and the plugin's
self-pod bypass look for that name.
*/}}
{{- define "istio-cni.name" -}}
{{- .Chart.Name -}}
{{- end -}}

{{- define "istio-cni.labels" -}}
app.kubernetes.io/name: {{ include "istio-cni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: istio
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "istio-cni.selectorLabels" -}}
k8s-app: {{ include "istio-cni.name" . }}-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "istio-cni.image" -}}
{{- if contains "/" .Values.image -}}
{{- .Values.image -}}
{{- else -}}
{{- printf "%s/%s:%s" .Values.hub .Values.image (.Values.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Platform preset name. Not guessed from the server version: `helm template` cannot see it, and an
explicit choice renders the same everywhere.
*/}}
{{- define "istio-cni.platform" -}}
{{- .Values.platform -}}
{{- end -}}

{{/*
Platform presets: what each platform changes from the generic defaults. Keep in sync with the
@default notes in values.yaml (tests/chart/test_presets.py renders every preset).
*/}}
{{- define "istio-cni.platformDefaults" -}}
{{- $platform := include "istio-cni.platform" . -}}
cniBinDir: /opt/cni/bin
cniConfDir: /etc/cni/net.d
cniConfFileName: ""
chained: true
privileged: false
seLinuxOptions: {}
{{- if eq $platform "gke" }}
cniBinDir: /home/kubernetes/bin
{{- else if eq $platform "k3s" }}
cniBinDir: /var/lib/rancher/k3s/data/current/bin
cniConfDir: /var/lib/rancher/k3s/agent/etc/cni/net.d
{{- else if eq $platform "microk8s" }}
cniBinDir: /var/snap/microk8s/current/opt/cni/bin
cniConfDir: /var/snap/microk8s/current/args/cni-network
{{- else if eq $platform "openshift" }}
cniBinDir: /var/lib/cni/bin
cniConfDir: /etc/cni/multus/net.d
cniConfFileName: istio-cni.conf
chained: false
privileged: true
seLinuxOptions:
  type: spc_t
{{- end }}
{{- end -}}

{{/*
Effective settings as YAML: an explicitly set value wins over the platform preset.
Use: $s := include "istio-cni.settings" . | fromYaml
*/}}
{{- define "istio-cni.settings" -}}
{{- $d := include "istio-cni.platformDefaults" . | fromYaml -}}
{{- $sc := .Values.securityContext -}}
cniBinDir: {{ .Values.cniBinDir | default $d.cniBinDir | quote }}
cniConfDir: {{ .Values.cniConfDir | default $d.cniConfDir | quote }}
cniConfFileName: {{ .Values.cniConfFileName | default $d.cniConfFileName | quote }}
chained: {{ ternary $d.chained .Values.chained (kindIs "invalid" .Values.chained) }}
privileged: {{ ternary $d.privileged $sc.privileged (kindIs "invalid" $sc.privileged) }}
seLinuxOptions: {{ $sc.seLinuxOptions | default $d.seLinuxOptions | toJson }}
repairMode: {{ include "istio-cni.repairMode" . }}
{{- end -}}

{{/*
Repair mode; the 2019 booleans still work (delete wins over label, as it did then).
*/}}
{{- define "istio-cni.repairMode" -}}
{{- if eq (toString .Values.repair.deletePods) "true" -}}
delete
{{- else if eq (toString .Values.repair.labelPods) "true" -}}
label
{{- else -}}
{{- .Values.repair.mode -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the repair controller opens pod netns through the host's /proc: repair in place, or
checkNetns (inspect running pods' rules) in any mode. Empty otherwise.
*/}}
{{- define "istio-cni.podNetnsAccess" -}}
{{- $s := include "istio-cni.settings" . | fromYaml -}}
{{- if and .Values.repair.enabled (or (eq $s.repairMode "repair") .Values.repair.checkNetns) -}}
true
{{- end -}}
{{- end -}}

{{/*
Linux capabilities the enabled features need; nothing else is granted (all others dropped).
*/}}
{{- define "istio-cni.capabilities" -}}
{{- $inPlace := include "istio-cni.podNetnsAccess" . | eq "true" -}}
{{- $caps := list -}}
{{- if or .Values.agent.enabled $inPlace -}}
{{- /* NET_ADMIN: commit netfilter rules (and TPROXY policy routes) in a pod's netns.
       NET_RAW: libiptc talks to x_tables through a raw socket.
       SYS_ADMIN: setns(2) into a pod's network namespace; no narrower capability allows it. */ -}}
{{- $caps = concat $caps (list "NET_ADMIN" "NET_RAW" "SYS_ADMIN") -}}
{{- end -}}
{{- if $inPlace -}}
{{- /* SYS_PTRACE: open /host/proc/<pid>/ns/net of a pod's processes (run as other users) to
       find the netns of a broken pod (repair in place) or to check its rules (checkNetns). */ -}}
{{- $caps = append $caps "SYS_PTRACE" -}}
{{- end -}}
{{- concat $caps .Values.securityContext.extraCapabilities | uniq | toJson -}}
{{- end -}}

{{/*
Stop early on settings that cannot work, with a message naming the value.
*/}}
{{- define "istio-cni.validate" -}}
{{- $s := include "istio-cni.settings" . | fromYaml -}}
{{- if or .Values.repair.hub (toString .Values.repair.tag | ne "") -}}
{{- fail "repair.hub / repair.tag are no longer used: the repair controller runs inside the install-cni container now; set hub / tag instead and remove repair.hub / repair.tag" -}}
{{- end -}}
{{- if and .Values.istioOwnedCNIConfig (not $s.chained) -}}
{{- fail "istioOwnedCNIConfig=true needs chained mode: the Istio-owned conflist is a copy of the primary CNI's chain (chained is false here, maybe through platform=openshift)" -}}
{{- end -}}
{{- if and (not $s.chained) (eq $s.cniConfFileName "") -}}
{{- fail "chained=false (standalone mode) needs cniConfFileName: without it the primary CNI's own config file would be overwritten" -}}
{{- end -}}
{{- end -}}
