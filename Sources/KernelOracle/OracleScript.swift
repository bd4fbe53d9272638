#if canImport(Glibc)
import Glibc
#endif

/// `tools/kernel-oracle/oracle.sh`, run as a child process: it boots Debian's Linux 7.2 under
/// QEMU with `test_hmm.ko` and runs commands there (see the script's header).
public struct OracleScript: Sendable {
    public let path: String

    public enum Failure: Error, CustomStringConvertible {
        case notFound([String])
        case cannotRun(String)
        case failed(status: Int32, output: String)
        public var description: String {
            switch self {
            case .notFound(let tried):
                return "tools/kernel-oracle/oracle.sh not found (tried \(tried.joined(separator: ", "))); set HMM_ORACLE_SCRIPT"
            case .cannotRun(let why): return "cannot run the kernel oracle: \(why)"
            case .failed(let status, _):
                return "the kernel oracle exited with status \(status)" + (status == 2 ? " (not prepared? run: tools/kernel-oracle/oracle.sh prepare)" : "")
            }
        }
    }

    public init(path: String) { self.path = path }

    /// `$HMM_ORACLE_SCRIPT`, else `tools/kernel-oracle/oracle.sh` in the working directory or
    /// one of its parents, else beside the package the running executable was built in
    /// (`.build/<config>/hmm`).
    public static func locate() throws(Failure) -> OracleScript {
        if let env = getenv("HMM_ORACLE_SCRIPT") { return OracleScript(path: String(cString: env)) }
        var tried: [String] = []
        var dirs: [String] = []
        var buf = [CChar](repeating: 0, count: 4096)
        if getcwd(&buf, buf.count) != nil {
            var d = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            while !d.isEmpty { dirs.append(d); d = parent(d) }
        }
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 {
            var d = parent(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            for _ in 0..<4 where !d.isEmpty { dirs.append(d); d = parent(d) }
        }
        for d in dirs {
            let p = (d == "/" ? "" : d) + "/tools/kernel-oracle/oracle.sh"
            tried.append(p)
            if access(p, R_OK) == 0 { return OracleScript(path: p) }
        }
        throw .notFound(Array(tried.prefix(3)))
    }

    private static func parent(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return slash == path.startIndex ? (path == "/" ? "" : "/") : String(path[..<slash])
    }

    /// Runs `bash oracle.sh ARGS…`; its standard error (progress, problems) goes to ours.
    /// Return: everything it printed on standard output. Throws when it exits non-zero.
    public func run(_ args: [String]) throws(Failure) -> String {
        let command = (["bash", path] + args).map(Self.shellQuote).joined(separator: " ")
        guard let pipe = popen(command, "r") else { throw .cannotRun(String(cString: strerror(errno))) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, pipe)
            if n <= 0 { break }
            output.append(contentsOf: chunk[0..<n])
        }
        let status = pclose(pipe)
        let text = String(decoding: output, as: UTF8.self)
        let exit = status == -1 ? -1 : (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        guard exit == 0 else { throw .failed(status: exit, output: text) }
        return text
    }

    static func shellQuote(_ s: String) -> String {
        "'" + s.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
    }
}
