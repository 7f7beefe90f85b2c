use rdkafka::ClientConfig;

/// Where Kafka is and which topic carries the city updates.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port`.
    #[arg(
        long,
        env = "CITYPOP_KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// The topic of city updates (key = city key, value = Avro event, null = delete).
    #[arg(long, env = "CITYPOP_TOPIC", default_value = "city-updates")]
    pub topic: String,
}

impl KafkaArgs {
    /// Settings every Kafka client of citypop shares; callers add their role's own.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("client.id", client_id)
            // librdkafka logs every failed connection attempt at error level; the
            // services report Kafka's state through readiness and metrics instead.
            .set("log.connection.close", "false");
        config
    }
}
