// A reader and a writer of the citypop topic built only from the Apache Avro reference
// library for Java and the Apache Kafka client: what another team in a Kafka shop
// would write from README's "Reading the topic from another language". The
// end-to-end tests (tests/tests/e2e/interop.rs) run it; it also works by hand against
// `make run`'s topic:
//
//   java -cp 'tests/interop/target/lib/*' tests/interop/Interop.java \
//       read 127.0.0.1:9092 city-updates schemas/avro
//
// Commands (all output on stdout, one JSON object a line):
//   fingerprint <schema.avsc>...
//       each schema's Parsing Canonical Form and its CRC-64-AVRO fingerprint as a
//       long and as the 8 bytes a single-object message carries
//   read <bootstrap> <topic> <schema dir>
//       every message from the beginning of each partition to its end offset, the
//       value decoded with BinaryMessageDecoder: the newest schema in <schema dir>
//       (by file name) is the reader schema, every schema there a known writer.
//       Exits 1 if a value cannot be decoded (the line then holds "error").
//   write <bootstrap> <topic> <schema.avsc> <key> <record as Avro JSON> [content-type]
//       encodes the record with BinaryMessageEncoder and that schema, produces it
//       with the key (and a content-type header), prints its partition and offset

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Interop {
  private static final ObjectMapper JSON = new ObjectMapper();

  public static void main(String[] args) throws Exception {
    if (args.length == 0) {
      usage();
    }
    String[] rest = Arrays.copyOfRange(args, 1, args.length);
    switch (args[0]) {
      case "fingerprint" -> fingerprint(rest);
      case "read" -> System.exit(read(rest));
      case "write" -> write(rest);
      default -> usage();
    }
  }

  private static void usage() {
    System.err.println(
        "usage: Interop fingerprint <schema.avsc>... | read <bootstrap> <topic> <schema dir>"
            + " | write <bootstrap> <topic> <schema.avsc> <key> <record json> [content-type]");
    System.exit(2);
  }

  private static void fingerprint(String[] files) throws Exception {
    for (String file : files) {
      Schema schema = new Schema.Parser().parse(new File(file));
      long fingerprint = SchemaNormalization.parsingFingerprint64(schema);
      ObjectNode line = JSON.createObjectNode();
      line.put("schema", file);
      line.put("canonical_form", SchemaNormalization.toParsingForm(schema));
      line.put("fingerprint", String.format("0x%016x", fingerprint));
      // Single-object encoding writes the fingerprint little-endian.
      line.put("wire", hex(ByteBuffer.allocate(8).order(java.nio.ByteOrder.LITTLE_ENDIAN)
          .putLong(fingerprint).array()));
      System.out.println(JSON.writeValueAsString(line));
    }
  }

  private static int read(String[] args) throws Exception {
    if (args.length != 3) {
      usage();
    }
    List<Path> files;
    try (var listing = Files.list(Path.of(args[2]))) {
      files = listing.filter(p -> p.toString().endsWith(".avsc")).sorted().toList();
    }
    if (files.isEmpty()) {
      throw new IllegalArgumentException("no .avsc file in " + args[2]);
    }
    List<Schema> schemas = new ArrayList<>();
    for (Path file : files) {
      // One parser each: every version defines the same record name.
      schemas.add(new Schema.Parser().parse(file.toFile()));
    }
    BinaryMessageDecoder<GenericRecord> decoder =
        new BinaryMessageDecoder<>(GenericData.get(), schemas.get(schemas.size() - 1));
    schemas.forEach(decoder::addSchema);

    Properties props = new Properties();
    props.put("bootstrap.servers", args[0]);
    props.put("enable.auto.commit", "false");
    props.put("key.deserializer", ByteArrayDeserializer.class.getName());
    props.put("value.deserializer", ByteArrayDeserializer.class.getName());
    int failures = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = consumer.partitionsFor(args[1], Duration.ofSeconds(30))
          .stream().map(p -> new TopicPartition(p.topic(), p.partition())).toList();
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> end = new HashMap<>(consumer.endOffsets(partitions));
      end.entrySet().removeIf(e -> consumer.position(e.getKey()) >= e.getValue());
      long deadline = System.nanoTime() + Duration.ofSeconds(120).toNanos();
      while (!end.isEmpty()) {
        if (System.nanoTime() > deadline) {
          throw new IllegalStateException("not all messages read within 120 s: " + end);
        }
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
          TopicPartition partition = new TopicPartition(record.topic(), record.partition());
          Long stop = end.get(partition);
          if (stop == null || record.offset() >= stop) {
            continue;
          }
          ObjectNode line = JSON.createObjectNode();
          line.put("partition", record.partition());
          line.put("offset", record.offset());
          line.put("key", record.key() == null
              ? null : new String(record.key(), StandardCharsets.UTF_8));
          ObjectNode headers = line.putObject("headers");
          for (Header header : record.headers()) {
            headers.put(header.key(), header.value() == null
                ? null : new String(header.value(), StandardCharsets.UTF_8));
          }
          if (record.value() == null) {
            line.putNull("value");
          } else {
            try {
              GenericRecord value = decoder.decode(record.value());
              // GenericData renders a record as JSON: strings quoted, longs as numbers.
              line.set("value", JSON.readTree(GenericData.get().toString(value)));
              line.put("writer_fingerprint", hex(Arrays.copyOfRange(record.value(), 2, 10)));
            } catch (Exception e) {
              failures++;
              line.put("error", e.toString());
            }
          }
          System.out.println(JSON.writeValueAsString(line));
          if (record.offset() + 1 >= stop) {
            end.remove(partition);
          }
        }
      }
    }
    if (failures > 0) {
      System.err.println(failures + " messages could not be decoded");
      return 1;
    }
    return 0;
  }

  private static void write(String[] args) throws Exception {
    if (args.length != 5 && args.length != 6) {
      usage();
    }
    Schema schema = new Schema.Parser().parse(new File(args[2]));
    // The record as Avro's JSON encoding gives it, read by the library itself.
    GenericRecord record = new GenericDatumReader<GenericRecord>(schema)
        .read(null, DecoderFactory.get().jsonDecoder(schema, args[4]));
    ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema)
        .encode(record);
    byte[] value = new byte[encoded.remaining()];
    encoded.get(value);

    Properties props = new Properties();
    props.put("bootstrap.servers", args[0]);
    props.put("acks", "all");
    props.put("key.serializer", ByteArraySerializer.class.getName());
    props.put("value.serializer", ByteArraySerializer.class.getName());
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
      ProducerRecord<byte[], byte[]> message =
          new ProducerRecord<>(args[1], args[3].getBytes(StandardCharsets.UTF_8), value);
      if (args.length == 6) {
        message.headers().add("content-type", args[5].getBytes(StandardCharsets.UTF_8));
      }
      RecordMetadata sent = producer.send(message).get();
      ObjectNode line = JSON.createObjectNode();
      line.put("partition", sent.partition());
      line.put("offset", sent.offset());
      line.put("writer_fingerprint", hex(Arrays.copyOfRange(value, 2, 10)));
      System.out.println(JSON.writeValueAsString(line));
    }
  }

  private static String hex(byte[] bytes) {
    StringBuilder out = new StringBuilder();
    for (byte b : bytes) {
      out.append(String.format("%02x", b));
    }
    return out.toString();
  }
}
