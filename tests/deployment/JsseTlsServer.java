// A TLS server that loads its key the way a Kafka broker does (JSSE, a PKCS12 keystore
// and its password), so tests/unit/test_kafka_sasl_deployment.py can check the files
// deploy/kafka/make-tls.sh makes against a client built as kafka-python builds it.
//
//   java JsseTlsServer.java KEYSTORE PASSWORD_FILE
//
// Prints its port, then answers every handshake with "ok\n" until killed.
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLServerSocket;
import javax.net.ssl.SSLSocket;

public class JsseTlsServer {
    public static void main(String[] args) throws Exception {
        char[] password = Files.readString(Path.of(args[1])).toCharArray();
        KeyStore keystore = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[0])) {
            keystore.load(in, password);
        }
        KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        keys.init(keystore, password);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(keys.getKeyManagers(), null, null);
        try (SSLServerSocket server = (SSLServerSocket) context.getServerSocketFactory()
                .createServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
            server.setEnabledProtocols(new String[] {"TLSv1.3", "TLSv1.2"});
            System.out.println(server.getLocalPort());
            System.out.flush();
            while (true) {
                try (SSLSocket client = (SSLSocket) server.accept()) {
                    client.startHandshake();
                    client.getOutputStream().write("ok\n".getBytes(StandardCharsets.US_ASCII));
                    client.getOutputStream().flush();
                } catch (IOException refused) {
                    // a client that did not accept the certificate
                }
            }
        }
    }
}
