#if canImport(Glibc)
import Glibc
#endif

/// `hmm bench --save FILE` and `--compare FILE`: a run kept as JSON Lines — a first line with
/// the commit, the date and the machine (cores, memory, CPU model), then one line per row in
/// the `--format json` shape — and a later run compared with it, figure by figure.
struct BenchRecord {
    struct Entry: Equatable { let name: String; let unit: String; let value: Double; let ratio: Double; let met: Bool }

    let header: String
    let entries: [Entry]

    /// The first line of a saved run: where and when it was measured.
    static func header(quick: Bool, reps: Int) -> String {
        "{\"commit\": \"\(jsonEscaped(currentCommit()))\", \"date\": \"\(isoDate())\", \"cores\": \(sysconf(Int32(_SC_NPROCESSORS_ONLN))), "
            + "\"memoryBytes\": \(UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))), "
            + "\"cpu\": \"\(jsonEscaped(cpuModel()))\", \"quick\": \(quick), \"reps\": \(reps)}"
    }

    /// Writes `header` and `rows` to `path`. Throws ENOENT-style errors as text.
    static func save(_ path: String, header: String, rows: [BenchRow]) throws {
        let text = ([header] + rows.map(\.json)).joined(separator: "\n") + "\n"
        guard let f = fopen(path, "w") else { throw BenchError(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        guard fputs(text, f) >= 0 else { throw BenchError(description: "cannot write \(path)") }
    }

    /// Whether `path` can be written (created if missing; an existing file is left as it is).
    static func checkWritable(_ path: String) throws {
        guard let f = fopen(path, "a") else { throw BenchError(description: "cannot write \(path): \(String(cString: strerror(errno)))") }
        fclose(f)
    }

    /// One line to standard error.
    static func printError(_ text: String) {
        var t = text + "\n"
        t.withUTF8 { b in _ = write(2, b.baseAddress, b.count) }
    }

    /// Reads a file written by `save`. Lines that are not rows (the header, error lines) are
    /// skipped; a file with no row at all is an error.
    static func load(_ path: String) throws -> BenchRecord {
        guard let f = fopen(path, "r") else { throw BenchError(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var lines: [String] = []
        var buf = [CChar](repeating: 0, count: 1 << 16) // a row is a few hundred bytes
        while fgets(&buf, Int32(buf.count), f) != nil {
            lines.append(cString(buf).trimmingSuffix("\n"))
        }
        let entries = lines.compactMap(entry)
        guard let first = lines.first, !entries.isEmpty else { throw BenchError(description: "\(path) holds no bench rows") }
        return BenchRecord(header: first, entries: entries)
    }

    /// One row line back: name, unit, value, ratio, met (nil for other lines).
    static func entry(_ line: String) -> Entry? {
        guard let name = stringField(line, "name"), let unit = stringField(line, "unit"),
              let value = numberField(line, "value"), let ratio = numberField(line, "ratio") else { return nil }
        return Entry(name: name, unit: unit, value: value, ratio: ratio, met: line.contains("\"met\": true"))
    }

    /// Each current row against the saved one of the same name: value and ratio before and
    /// after, the value's change in percent, and whether the target verdict changed.
    static func comparison(old: BenchRecord, new rows: [BenchRow]) -> [String] {
        var out = ["# compared with: \(old.header)"]
        for r in rows {
            guard let o = old.entries.first(where: { $0.name == r.name }) else { out.append("\(r.name): new figure"); continue }
            let change = o.value == 0 ? 0 : (r.value - o.value) / o.value * 100
            let sign = change >= 0 ? "+" : ""
            var line = "\(r.name): \(fmt(o.value)) → \(fmt(r.value)) \(r.unit) (\(sign)\(fmt(change))%), ratio \(fmt(o.ratio)) → \(fmt(r.ratio))"
            if o.met != r.met { line += r.met ? ", now met" : ", no longer met" }
            out.append(line)
        }
        for o in old.entries where !rows.contains(where: { $0.name == o.name }) { out.append("\(o.name): not measured this run") }
        return out
    }

    static func stringField(_ line: String, _ key: String) -> String? {
        guard let r = line.firstRange(of: "\"\(key)\": \"") else { return nil }
        let rest = line[r.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }

    static func numberField(_ line: String, _ key: String) -> Double? {
        guard let r = line.firstRange(of: "\"\(key)\": ") else { return nil }
        let rest = line[r.upperBound...].prefix { "0123456789.-+eE".contains($0) }
        return Double(rest)
    }

    static func jsonEscaped(_ s: String) -> String {
        s.replacing("\\", with: "\\\\").replacing("\"", with: "\\\"")
    }

    /// The commit checked out in the working directory or above it (`.git/HEAD`, following
    /// one ref, loose or packed), or "unknown".
    static func currentCommit() -> String {
        var dir = currentDirectory()
        for _ in 0..<16 {
            if let head = readFile(dir + "/.git/HEAD")?.trimmingSuffix("\n") {
                guard head.hasPrefix("ref: ") else { return String(head.prefix(12)) }
                let ref = String(head.dropFirst(5))
                if let sha = readFile(dir + "/.git/" + ref)?.trimmingSuffix("\n") { return String(sha.prefix(12)) }
                if let packed = readFile(dir + "/.git/packed-refs"),
                   let line = packed.split(separator: "\n").first(where: { $0.hasSuffix(" " + ref) }) {
                    return String(line.prefix(12))
                }
                return "unknown"
            }
            guard let slash = dir.lastIndex(of: "/"), dir != "/" else { break }
            dir = slash == dir.startIndex ? "/" : String(dir[..<slash])
        }
        return "unknown"
    }

    static func currentDirectory() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        return getcwd(&buf, buf.count) != nil ? cString(buf) : "."
    }

    static func readFile(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out = "", buf = [CChar](repeating: 0, count: 4096)
        while fgets(&buf, Int32(buf.count), f) != nil { out += cString(buf) }
        return out
    }

    static func cpuModel() -> String {
        guard let info = readFile("/proc/cpuinfo"),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
              let colon = line.firstIndex(of: ":") else { return "unknown" }
        return line[line.index(after: colon)...].trimmed(" \t")
    }

    static func isoDate() -> String {
        var t = time(nil), tm = tm()
        gmtime_r(&t, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &tm)
        return cString(buf)
    }
}

/// The text of a NUL-terminated C buffer.
func cString(_ buf: [CChar]) -> String {
    buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

extension StringProtocol {
    func trimmingSuffix(_ s: String) -> String { hasSuffix(s) ? String(dropLast(s.count)) : String(self) }
    func trimmed(_ set: String) -> String {
        var sub = Substring(self)
        while let f = sub.first, set.contains(f) { sub = sub.dropFirst() }
        while let l = sub.last, set.contains(l) { sub = sub.dropLast() }
        return String(sub)
    }
}
