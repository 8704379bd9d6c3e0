/*
 * One HDFS namenode and one datanode in a single JVM (Hadoop's MiniDFSCluster), for Tally's
 * tests. Usage: MiniDfs DIR PORT. It keeps its blocks and metadata under DIR, listens for
 * the namenode protocol on 127.0.0.1:PORT, and writes the file system's URI to DIR/ready
 * once the datanode has registered. It runs until it is killed.
 */
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniDfs {
    public static void main(String[] args) throws Exception {
        File dir = new File(args[0]);
        int port = Integer.parseInt(args[1]);
        HdfsConfiguration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, new File(dir, "data").getAbsolutePath());
        conf.set("dfs.replication", "1");
        conf.set("dfs.blocksize", "16777216");
        conf.set("dfs.namenode.rpc-bind-host", "127.0.0.1");
        conf.set("dfs.datanode.address", "127.0.0.1:0");
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.set("dfs.namenode.http-address", "127.0.0.1:0");
        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
            .nameNodePort(port)
            .numDataNodes(1)
            .format(true)
            .build();
        cluster.waitActive();
        String uri = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
        File ready = new File(dir, "ready");
        Files.write(new File(dir, "ready.tmp").toPath(), uri.getBytes(StandardCharsets.UTF_8));
        Files.move(new File(dir, "ready.tmp").toPath(), ready.toPath());
        System.out.println("ready " + uri);
        Thread.currentThread().join();
    }
}
