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
{{- define "hush.gateway" -}}{{ include "hush.fullname" . }}-gateway{{- end -}}
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

{{/* The gateway's service account, whose name is its SPIFFE ID's last segment. */}}
{{- define "hush.gatewayServiceAccount" -}}
{{- .Values.gateway.serviceAccount.name | default (include "hush.gateway" .) -}}
{{- end -}}

{{/* Whether a gateway certificate is ordered by ACME: "true" or "". */}}
{{- define "hush.gatewayAcme" -}}
{{- range .Values.gateway.certificates }}{{ if .acme }}true{{ end }}{{ end -}}
{{- end -}}

{{/*
The gateway's configuration (see GatewayConfig in crates/config): every path is where the
gateway's Deployment mounts it, and the ports are the container's, which the Service maps.
*/}}
{{- define "hush.gatewayConfig" -}}
{{- $g := .Values.gateway -}}
{{- if not $g.certificates -}}
{{- fail "gateway.certificates: name at least one certificate (secretName or acme: true) for the gateway to serve" -}}
{{- end -}}
{{- if not $g.routes -}}
{{- fail "gateway.routes: name at least one route into the mesh (host, upstream, identity), or the ConfigMap gateway.existingConfigMap" -}}
{{- end -}}
{{- $hsts := $g.hsts | default dict -}}
ca:
  address: {{ include "hush.caAddress" . | quote }}
  trust_bundle: /var/run/secrets/hush/bundle/bundle.pem
  token_file: /var/run/secrets/hush/token/token
https:
  listen: "[::]:8443"
  profile: {{ $g.tls.profile }}
  hsts:
    max_age: {{ $hsts.maxAge | default "8760h" | quote }}
    include_subdomains: {{ $hsts.includeSubdomains | default false }}
    preload: {{ $hsts.preload | default false }}
# Redirects and ACME HTTP-01 challenges; redirects name the Service's HTTPS port.
http:
  listen: "[::]:8080"
  redirect_port: {{ $g.service.httpsPort }}
certificates:
{{- range $i, $c := $g.certificates }}
  - hosts: {{ toJson $c.hosts }}
    {{- if $c.acme }}
    acme: true
    {{- else }}
    # The Secret {{ $c.secretName }}; the kubelet updates the files when it changes.
    files:
      cert: /var/run/secrets/hush/certificates/{{ $i }}/tls.crt
      key: /var/run/secrets/hush/certificates/{{ $i }}/tls.key
    {{- end }}
{{- end }}
{{- if include "hush.gatewayAcme" . }}
{{- if not $g.acme.acceptTermsOfService }}
{{- fail "gateway.acme.acceptTermsOfService: an ACME CA opens no account without it; read its terms and set it to true" }}
{{- end }}
acme:
  directory: {{ $g.acme.directory | quote }}
  {{- with $g.acme.email }}
  contact: [{{ printf "mailto:%s" . | quote }}]
  {{- end }}
  accept_terms_of_service: true
  challenge: {{ $g.acme.challenge }}
  # A folder of the ACME volume, which the gateway makes 0700.
  state_dir: /var/lib/hush-gateway/acme/state
{{- end }}
routes:
{{- range $g.routes }}
  - host: {{ .host | quote }}
    path_prefix: {{ .pathPrefix | default "/" | quote }}
    upstream: {{ .upstream | quote }}
    identity: {{ toJson .identity }}
{{- end }}
# Every address, for the kubelet's probes and Prometheus.
admin:
  listen: "[::]:{{ $g.adminPort }}"
access_log: {{ $g.accessLog }}
{{- with .Values.tracing.otlpEndpoint }}
tracing:
  otlp_endpoint: {{ . | quote }}
  service_name: hush-gateway
{{- end }}
{{- end -}}
