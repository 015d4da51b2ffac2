{{/* The release's base name: the release name, or <release>-hush when it does not say hush. */}}
{{- define "hush.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hush.ca" -}}{{ include "hush.fullname" . }}-ca{{- end -}}
{{- define "hush.injector" -}}{{ include "hush.fullname" . }}-injector{{- end -}}
{{- define "hush.trustBundle" -}}{{ include "hush.fullname" . }}-trust-bundle{{- end -}}

{{/* The CA's address as sidecars dial it; its certificate names this host. */}}
{{- define "hush.caAddress" -}}
https://{{ include "hush.ca" . }}.{{ .Release.Namespace }}.svc:{{ .Values.ca.port }}
{{- end -}}

{{/* The CA's metrics port; 0 when it serves none (ca.metrics.port 0 or null). */}}
{{- define "hush.caMetricsPort" -}}
{{- $port := int ((.Values.ca.metrics | default dict).port | default 0) -}}
{{- if and $port (eq $port (int .Values.ca.port)) -}}
{{- fail (printf "ca.metrics.port %d is also ca.port: give the metrics a port of their own, or 0 for none" $port) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{- define "hush.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hush.labels" -}}
app.kubernetes.io/name: hush
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component (ca, injector). */}}
{{- define "hush.selector" -}}
app.kubernetes.io/name: hush
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The trust bundle, required: nothing can be trusted without it. */}}
{{- define "hush.bundle" -}}
{{- required "trustBundle is required: pass the bundle.pem written by `hush ca init` with --set-file trustBundle=ca/bundle.pem" .Values.trustBundle -}}
{{- end -}}

{{/* A hardened container: not root, nothing to escalate to, read-only. */}}
{{- define "hush.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The injector's configuration file (see InjectorConfig in crates/inject). */}}
{{- define "hush.injectorConfig" -}}
image: {{ include "hush.image" . | quote }}
image_pull_policy: {{ .Values.image.pullPolicy | quote }}
ca_address: {{ include "hush.caAddress" . | quote }}
token_audience: {{ .Values.ca.tokenAudience | quote }}
policy_configmap: {{ .Values.proxy.policyConfigMap | quote }}
proxy_uid: {{ .Values.proxy.uid }}
inbound_port: {{ .Values.proxy.inboundPort }}
outbound_port: {{ .Values.proxy.outboundPort }}
admin_port: {{ .Values.proxy.adminPort }}
exclude_outbound_cidrs: {{ .Values.proxy.excludeOutboundCIDRs | toJson }}
log_level: {{ .Values.proxy.logLevel | quote }}
{{- with .Values.tracing.otlpEndpoint }}
otlp_endpoint: {{ . | quote }}
{{- end }}
cpu_request: {{ .Values.proxy.cpu | quote }}
memory: {{ .Values.proxy.memory | quote }}
workload_api: {{ .Values.proxy.workloadApi }}
trust_bundle: |
  {{- include "hush.bundle" . | trim | nindent 2 }}
{{- end -}}

{{- /* The CA's federation settings, with defaults for charts values older than federation. */ -}}
{{- define "hush.caFederation" -}}
{{- $f := .Values.ca.federation | default dict -}}
{{- $port := int ($f.bundleEndpointPort | default 0) -}}
{{- if and $port (or (eq $port (int .Values.ca.port)) (eq $port (int (include "hush.caMetricsPort" .)))) -}}
{{- fail (printf "ca.federation.bundleEndpointPort %d is also the CA's gRPC or metrics port: give the bundle endpoint a port of its own" $port) -}}
{{- end -}}
{{- toJson (dict "port" $port "refreshHint" ($f.refreshHint | default "5m") "partners" ($f.partners | default list)) -}}
{{- end -}}
