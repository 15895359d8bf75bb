// The Kafka Streams contender of the benchmark: the same trivial map as every other
// contender (parse the JSON value, add "x": 1, write it), as a Kafka Streams user would
// write it. Launched as a single source file, no build step:
//
//   java -cp '<kafka-streams jar>:<rocksdbjni jar>:<kafka libs>/*' StreamsMap.java \
//        BOOTSTRAP INPUT OUTPUT APPLICATION_ID GUARANTEE COMMIT_INTERVAL_MS STATE_DIR
//
// GUARANTEE is exactly_once_v2 or at_least_once. The producer settings are ledgerflow's
// (app.kafka.clients.TxnProducer): linger.ms 5, batch.size 1 MB, lz4. Progress is read by
// the harness from the application's consumer group (= the application id).
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

public class StreamsMap {
    public static void main(String[] args) throws InterruptedException {
        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[3]);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, args[4]);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(args[5]));
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[6]);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
        p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        p.put(StreamsConfig.producerPrefix("linger.ms"), 5);
        p.put(StreamsConfig.producerPrefix("batch.size"), 1_000_000);
        p.put(StreamsConfig.producerPrefix("compression.type"), "lz4");
        ObjectMapper json = new ObjectMapper();
        StreamsBuilder b = new StreamsBuilder();
        b.stream(args[1], Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
                .mapValues(v -> {
                    try {
                        ObjectNode row = (ObjectNode) json.readTree(v);
                        row.put("x", 1);
                        return json.writeValueAsBytes(row);
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                })
                .to(args[2], Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        KafkaStreams streams = new KafkaStreams(b.build(), p);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            done.countDown();
        }));
        streams.start();
        done.await();
    }
}
