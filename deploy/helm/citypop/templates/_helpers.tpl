{{/* Names ------------------------------------------------------------------ */}}

{{- define "citypop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name; components add "-producer-api", "-indexer"… */}}
{{- define "citypop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "citypop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "citypop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "citypop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "citypop.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "citypop.fullname" . }}
{{- end }}
{{- end }}

{{/* Whether any pod reads the credentials Secret. */}}
{{- define "citypop.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.create }}true{{ end }}
{{- end }}

{{- define "citypop.dlqTopic" -}}
{{- default (printf "%s.dlq" .Values.kafka.topic.name) .Values.kafka.dlqTopic }}
{{- end }}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "citypop.labels" -}}
helm.sh/chart: {{ include "citypop.chart" . }}
app.kubernetes.io/name: {{ include "citypop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: citypop
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "indexer"). */}}
{{- define "citypop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "citypop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "citypop.componentLabels" -}}
{{ include "citypop.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images ----------------------------------------------------------------- */}}

{{/* Call with (dict "root" $ "image" .Values.producerApi.image). */}}
{{- define "citypop.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $repository := .image.repository -}}
{{- if $registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}{{ end -}}
{{- if .image.digest -}}
{{ $repository }}@{{ .image.digest }}
{{- else -}}
{{ $repository }}:{{ .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Pod spec pieces -------------------------------------------------------- */}}

{{/* Settings both services read, as container env entries. */}}
{{- define "citypop.commonEnv" -}}
- name: CITYPOP_KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: CITYPOP_TOPIC
  value: {{ .Values.kafka.topic.name | quote }}
- name: CITYPOP_ELASTICSEARCH_URL
  value: {{ .Values.engine.url | quote }}
- name: CITYPOP_INDEX_ALIAS
  value: {{ .Values.engine.indexAlias | quote }}
- name: CITYPOP_ELASTICSEARCH_TIMEOUT
  value: {{ .Values.engine.timeout | quote }}
- name: CITYPOP_LOG
  value: {{ .Values.log.level | quote }}
- name: CITYPOP_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- with .Values.tracing.otlpEndpoint }}
- name: CITYPOP_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: CITYPOP_OTLP_PROTOCOL
  value: {{ .Values.tracing.otlpProtocol | quote }}
- name: CITYPOP_TRACE_SAMPLING_RATIO
  value: {{ .Values.tracing.samplingRatio | quote }}
{{- with .Values.kafka.securityProtocol }}
- name: CITYPOP_KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.kafka.sasl.mechanism }}
- name: CITYPOP_KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: CITYPOP_KAFKA_SSL_CA_LOCATION
  value: /etc/citypop/kafka-ca/{{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- if .Values.engine.tls.caSecret.name }}
- name: CITYPOP_ELASTICSEARCH_CA_FILE
  value: /etc/citypop/engine-ca/{{ .Values.engine.tls.caSecret.key }}
{{- end }}
{{- if include "citypop.hasSecret" . }}
{{- $secret := include "citypop.secretName" . }}
{{- range $name, $key := dict "CITYPOP_KAFKA_SASL_USERNAME" "kafka-sasl-username" "CITYPOP_KAFKA_SASL_PASSWORD" "kafka-sasl-password" "CITYPOP_ELASTICSEARCH_USERNAME" "elasticsearch-username" "CITYPOP_ELASTICSEARCH_PASSWORD" "elasticsearch-password" "CITYPOP_ELASTICSEARCH_API_KEY" "elasticsearch-api-key" }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/* Read-only mounts of the CA certificates, and /tmp; pair with citypop.volumes. */}}
{{- define "citypop.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/citypop/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.engine.tls.caSecret.name }}
- name: engine-ca
  mountPath: /etc/citypop/engine-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "citypop.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.kafka.tls.caSecret }}
{{- if .name }}
- name: kafka-ca
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.engine.tls.caSecret }}
{{- if .name }}
- name: engine-ca
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- end }}

{{/* Topology spread of one component: call with (dict "root" $ "component" "indexer"). */}}
{{- define "citypop.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  {{- range $key, $when := dict "kubernetes.io/hostname" .root.Values.topologySpread.nodes "topology.kubernetes.io/zone" .root.Values.topologySpread.zones }}
  - maxSkew: 1
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $when }}
    labelSelector:
      matchLabels:
        {{- include "citypop.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
    matchLabelKeys: [pod-template-hash]
  {{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations: (dict "root" $ "extra" podAnnotations), plus the checksum of the
chart's Secret, so that pods restart when credentials change. Empty when there are none. */}}
{{- define "citypop.podAnnotations" -}}
{{- $annotations := deepCopy (.extra | default dict) }}
{{- if and .root.Values.secrets.create (not .root.Values.secrets.existingSecret) }}
{{- $_ := set $annotations "checksum/secret" (include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum) }}
{{- end }}
{{- with $annotations }}{{ toYaml . }}{{ end }}
{{- end }}

{{/* Chart-level checks that a schema cannot express. */}}
{{- define "citypop.validate" -}}
{{- $partitions := int .Values.kafka.topic.partitions }}
{{- if gt (int .Values.indexer.replicaCount) $partitions }}
{{- fail (printf "indexer.replicaCount (%d) exceeds kafka.topic.partitions (%d): the extra consumers would get no partition" (int .Values.indexer.replicaCount) $partitions) }}
{{- end }}
{{- if and .Values.indexer.autoscaling.keda.enabled (gt (int .Values.indexer.autoscaling.keda.maxReplicas) $partitions) }}
{{- fail (printf "indexer.autoscaling.keda.maxReplicas (%d) exceeds kafka.topic.partitions (%d)" (int .Values.indexer.autoscaling.keda.maxReplicas) $partitions) }}
{{- end }}
{{- if and .Values.kafka.sasl.mechanism (not (hasPrefix "SASL_" .Values.kafka.securityProtocol)) }}
{{- fail "kafka.sasl.mechanism is set but kafka.securityProtocol is not SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- if and .Values.secrets.existingSecret .Values.secrets.create }}
{{- if or .Values.kafka.sasl.password .Values.engine.auth.password .Values.producerApi.apiKeys }}
{{- fail "credentials are set in values and secrets.existingSecret too: put them in the existing Secret, and set secrets.create=false" }}
{{- end }}
{{- end }}
{{- end }}

{{/* One NetworkPolicy egress rule from {ports: [...], to: [...]}; no "to" = any address. */}}
{{- define "citypop.egressRule" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The bootstrap Job's topic-creating container: (dict "root" $ "hookSecret" bool). */}}
{{- define "citypop.bootstrapTopicsContainer" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
- name: topics
  image: {{ printf "%s:%s" $v.bootstrap.image.repository $v.bootstrap.image.tag }}
  imagePullPolicy: {{ $v.bootstrap.image.pullPolicy }}
  command: [/bin/bash, -ec]
  args:
    - |
      props=/tmp/client.properties
      : > "$props"
      # JAAS wants " and \ escaped; the properties file unescapes \ once more.
      escape() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\\/\\\\/g'; }
      if [ -n "${KAFKA_SECURITY_PROTOCOL:-}" ]; then
        echo "security.protocol=${KAFKA_SECURITY_PROTOCOL}" >> "$props"
      fi
      if [ -n "${KAFKA_SASL_MECHANISM:-}" ]; then
        case "$KAFKA_SASL_MECHANISM" in
          PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
          *) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
        esac
        echo "sasl.mechanism=${KAFKA_SASL_MECHANISM}" >> "$props"
        echo "sasl.jaas.config=${module} required username=\"$(escape "${KAFKA_SASL_USERNAME:-}")\" password=\"$(escape "${KAFKA_SASL_PASSWORD:-}")\";" >> "$props"
      fi
      if [ -n "${KAFKA_CA_FILE:-}" ]; then
        echo "ssl.truststore.type=PEM" >> "$props"
        echo "ssl.truststore.location=${KAFKA_CA_FILE}" >> "$props"
      fi
      kafka() { /opt/kafka/bin/kafka-topics.sh --bootstrap-server "$BOOTSTRAP_SERVERS" --command-config "$props" "$@"; }
      echo "waiting for Kafka at $BOOTSTRAP_SERVERS"
      until /opt/kafka/bin/kafka-broker-api-versions.sh --bootstrap-server "$BOOTSTRAP_SERVERS" --command-config "$props" >/dev/null 2>&1; do
        sleep 5
      done
      replication=()
      if [ "$REPLICATION_FACTOR" != "-1" ]; then replication=(--replication-factor "$REPLICATION_FACTOR"); fi
      # Compaction keeps the newest event and the tombstone of every city.
      # With acks=all, a write is acknowledged once this many replicas hold it.
      insync=()
      min_insync="$MIN_INSYNC_REPLICAS"
      if [ "$min_insync" = "0" ]; then
        if [ "$REPLICATION_FACTOR" -ge 3 ]; then min_insync=2; elif [ "$REPLICATION_FACTOR" -ge 1 ]; then min_insync=1; fi
      fi
      if [ "$min_insync" != "0" ]; then insync=(--config "min.insync.replicas=$min_insync"); fi
      kafka --create --if-not-exists --topic "$TOPIC" --partitions "$PARTITIONS" "${replication[@]}" "${insync[@]}" --config cleanup.policy=compact
      # Dead letters wait for a fix and a redrive, however long that takes.
      kafka --create --if-not-exists --topic "$DLQ_TOPIC" --partitions 1 "${replication[@]}" "${insync[@]}" --config "retention.ms=$DLQ_RETENTION_MS"
      actual=$(kafka --describe --topic "$TOPIC" | sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -n 1)
      if [ "$actual" != "$PARTITIONS" ]; then
        echo "warning: $TOPIC has $actual partitions, the chart expects $PARTITIONS (partitions are fixed at creation)" >&2
      fi
      kafka --describe --topic "${TOPIC}|${DLQ_TOPIC}" | grep -v 'Partition: ' || true
  env:
    - name: BOOTSTRAP_SERVERS
      value: {{ $v.kafka.bootstrapServers | quote }}
    - name: TOPIC
      value: {{ $v.kafka.topic.name | quote }}
    - name: DLQ_TOPIC
      value: {{ include "citypop.dlqTopic" $root | quote }}
    - name: PARTITIONS
      value: {{ $v.kafka.topic.partitions | int64 | quote }}
    - name: REPLICATION_FACTOR
      value: {{ $v.kafka.topic.replicationFactor | int64 | quote }}
    - name: MIN_INSYNC_REPLICAS
      value: {{ $v.kafka.topic.minInsyncReplicas | int64 | quote }}
    - name: DLQ_RETENTION_MS
      value: {{ $v.kafka.dlqRetentionMs | int64 | quote }}
    - name: KAFKA_SECURITY_PROTOCOL
      value: {{ $v.kafka.securityProtocol | quote }}
    - name: KAFKA_SASL_MECHANISM
      value: {{ $v.kafka.sasl.mechanism | quote }}
    {{- if $v.kafka.tls.caSecret.name }}
    - name: KAFKA_CA_FILE
      value: /etc/citypop/kafka-ca/{{ $v.kafka.tls.caSecret.key }}
    {{- end }}
    {{- $secret := "" }}
    {{- if .hookSecret }}{{ $secret = printf "%s-bootstrap" (include "citypop.fullname" $root) }}
    {{- else if $v.secrets.existingSecret }}{{ $secret = $v.secrets.existingSecret }}{{ end }}
    {{- if $secret }}
    {{- range $name, $key := dict "KAFKA_SASL_USERNAME" "kafka-sasl-username" "KAFKA_SASL_PASSWORD" "kafka-sasl-password" }}
    - name: {{ $name }}
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: {{ $key }}
          optional: true
    {{- end }}
    {{- end }}
    # The Kafka CLI writes its logs, JVM data and client.properties under /tmp.
    - name: LOG_DIR
      value: /tmp/logs
    - name: HOME
      value: /tmp
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  resources:
    {{- toYaml $v.bootstrap.resources | nindent 4 }}
  volumeMounts:
    {{- include "citypop.volumeMounts" $root | nindent 4 }}
{{- end }}
