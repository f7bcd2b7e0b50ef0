{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "rua-sink.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart's unless it already holds it. */}}
{{- define "rua-sink.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rua-sink.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rua-sink.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rua-sink.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The pods of the Jobs (migrate, prune): not the selector labels above, which the Services
and the Deployment select by, so that no Service sends them mail or scrapes; part-of tells
one release's from another's, and the jobs' NetworkPolicy selects by these.
*/}}
{{- define "rua-sink.jobSelectorLabels" -}}
app.kubernetes.io/name: {{ include "rua-sink.name" . }}
app.kubernetes.io/part-of: {{ include "rua-sink.fullname" . }}
{{- end }}

{{- define "rua-sink.labels" -}}
helm.sh/chart: {{ include "rua-sink.chart" . }}
{{ include "rua-sink.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rua-sink.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rua-sink.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rua-sink.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The Secret holding the database URL, and its key: database.existingSecret, else
<fullname>-database (created by the chart from database.url, or by hand under the key "url").
*/}}
{{- define "rua-sink.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "rua-sink.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rua-sink.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "url" }}
{{- end }}
{{- end }}

{{/* Pod and container security settings shared by the server and the migration Job. */}}
{{- define "rua-sink.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "rua-sink.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The database URL file, mounted from its Secret. */}}
{{- define "rua-sink.databaseEnv" -}}
- name: RUA_SINK_DATABASE_URL_FILE
  value: /etc/rua-sink/database/{{ include "rua-sink.databaseSecretKey" . }}
{{- end }}

{{- define "rua-sink.databaseVolumeMount" -}}
- name: database
  mountPath: /etc/rua-sink/database
  readOnly: true
{{- end }}

{{- define "rua-sink.databaseVolume" -}}
- name: database
  secret:
    secretName: {{ include "rua-sink.databaseSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "rua-sink.databaseSecretKey" . }}
        path: {{ include "rua-sink.databaseSecretKey" . }}
{{- end }}

{{/* The domain of each report address, sorted and unique. */}}
{{- define "rua-sink.addressDomains" -}}
{{- $domains := list }}
{{- range .Values.addresses }}
{{- $domains = append $domains (splitList "@" . | last | lower) }}
{{- end }}
{{- $domains | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
RUA_SINK_IP_DATABASES: each file of ipDatabases.files in the volume's mount.
*/}}
{{- define "rua-sink.ipDatabases" -}}
{{- $paths := list }}
{{- range .Values.ipDatabases.files }}
{{- $paths = append $paths (printf "/var/lib/rua-sink/ip-databases/%s" .) }}
{{- end }}
{{- join "," $paths }}
{{- end }}
