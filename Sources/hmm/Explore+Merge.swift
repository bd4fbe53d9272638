import ArgumentParser
import Explorer

#if canImport(Glibc)
import Glibc
#endif

/// `hmm explore --merge SHARD.json…`: the shards of a campaign (`--shard K/N --format json`)
/// merged into the campaign's result: executions and steps add up, the distinct executions
/// are the union of the shards' traces, and the failure is the one with the lowest seed. Each
/// shard stops at its own first failure, so the lowest is the first an unsharded run meets;
/// the counts then include the seeds other shards ran past it. A shard stopped by its time
/// budget may not have reached a lower failing seed: the merge says so (`incomplete`).
extension Explore {
    struct ShardResult {
        let file: String, campaign: String, shard: Shard
        let executions: Int, steps: Int, seconds: Double
        let stoppedByTime: Bool
        let result: String
        let traceHashes: [String]
        let failure: JSON?
        var failureSeed: UInt64? {
            guard let f = failure?["seed"] else { return nil }
            if let v = f.intValue { return UInt64(exactly: v) }
            return f.stringValue.flatMap { UInt64($0) }
        }
    }

    struct MergeError: Error, CustomStringConvertible { let description: String }

    /// Reads the shard results of one JSON file (`hmm explore --format json --shard K/N`).
    static func shardResults(path: String) throws -> [ShardResult] {
        guard let f = fopen(path, "r") else { throw MergeError(description: "\(path): cannot read: \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes.append(contentsOf: buf[0..<n])
            guard bytes.count <= 1 << 30 else { throw MergeError(description: "\(path): larger than 1 GiB") }
        }
        let doc: JSON
        do { doc = try JSONParser.parse(String(decoding: bytes, as: UTF8.self)) } catch {
            throw MergeError(description: "\(path): not JSON (\(error))")
        }
        guard let files = doc["files"]?.arrayValue else { throw MergeError(description: "\(path): expected an object with \"files\" (hmm explore --format json)") }
        return try files.enumerated().map { i, o in
            func field<T>(_ name: String, _ get: (JSON) -> T?) throws -> T {
                guard let v = o[name].flatMap(get) else {
                    throw MergeError(description: "\(path): files[\(i)]: expected \"\(name)\" (was the campaign run with --shard K/N?)")
                }
                return v
            }
            let shardText = try field("shard") { $0.stringValue }
            guard let shard = Shard(parsing: shardText) else { throw MergeError(description: "\(path): files[\(i)]: shard '\(shardText)' is not K/N") }
            let count: (JSON) -> Int? = { $0.intValue.flatMap { $0 >= 0 ? $0 : nil } }
            let r = ShardResult(file: try field("file") { $0.stringValue }, campaign: try field("campaign") { $0.stringValue },
                                shard: shard, executions: try field("executions", count),
                                steps: try field("steps", count), seconds: try field("seconds") { $0.doubleValue.flatMap { $0 >= 0 ? $0 : nil } },
                                stoppedByTime: o["stoppedByTime"].map { if case .bool(true) = $0 { return true } else { return false } } ?? false,
                                result: try field("result") { $0.stringValue },
                                traceHashes: try field("traceHashes") { $0.arrayValue?.compactMap(\.stringValue) },
                                failure: o["failure"])
            guard r.result == "clean" || FailureKind(rawValue: r.result) != nil else {
                throw MergeError(description: "\(path): files[\(i)]: result '\(r.result)' is not clean or a failure kind (\(r.result == "malformed" ? "the script is malformed" : "unknown"))")
            }
            guard (r.result == "clean") == (r.failure == nil), r.failure == nil || r.failureSeed != nil else {
                throw MergeError(description: "\(path): files[\(i)]: result '\(r.result)' and its failure object do not agree")
            }
            return r
        }
    }

    /// Merges the shards of each campaign (grouped by file and campaign, in order of first
    /// appearance); every shard 0..<N must be there exactly once.
    static func merged(_ results: [ShardResult]) throws -> [JSON] {
        var order: [String] = []
        var groups: [String: [ShardResult]] = [:]
        for r in results {
            let key = r.file + "\u{0}" + r.campaign
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(r)
        }
        return try order.map { key in
            let shards = groups[key]!
            let first = shards[0], n = first.shard.count
            guard shards.allSatisfy({ $0.shard.count == n }) else {
                throw MergeError(description: "\(first.file): shards of one campaign split it differently (\(shards.map(\.shard.description)))")
            }
            let indices = shards.map(\.shard.index).sorted()
            guard indices == Array(0..<n) else {
                let missing = Set(0..<n).subtracting(indices).sorted()
                let twice = Dictionary(grouping: indices, by: { $0 }).filter { $0.value.count > 1 }.keys.sorted()
                throw MergeError(description: "\(first.file): expected shards 0..<\(n) once each; "
                                 + (missing.isEmpty ? "" : "missing \(missing.map { "\($0)/\(n)" }.joined(separator: ", ")) ")
                                 + (twice.isEmpty ? "" : "given twice \(twice.map { "\($0)/\(n)" }.joined(separator: ", "))"))
            }
            var executions = 0, steps = 0
            for r in shards {
                let e = executions.addingReportingOverflow(r.executions), t = steps.addingReportingOverflow(r.steps)
                guard !e.overflow, !t.overflow else { throw MergeError(description: "\(first.file): the shards' counts overflow") }
                executions = e.partialValue; steps = t.partialValue
            }
            let hashes = Set(shards.flatMap(\.traceHashes))
            let stopped = shards.filter(\.stoppedByTime).map(\.shard.description)
            let failed = shards.filter { $0.failure != nil }.min { ($0.failureSeed ?? .max) < ($1.failureSeed ?? .max) }
            var o: [(String, JSON)] = [
                ("file", .string(first.file)), ("campaign", .string(first.campaign)), ("shards", .int(n)),
                ("executions", .int(executions)), ("steps", .int(steps)),
                ("seconds", .double(shards.map(\.seconds).max() ?? 0)), ("cpuSeconds", .double(shards.reduce(0) { $0 + $1.seconds })),
                ("incomplete", .array(stopped.map { .string($0) })),
                ("distinct", .int(hashes.count)), ("result", .string(failed?.result ?? "clean")),
                ("traceHashes", .array(hashes.sorted().map { .string($0) })),
            ]
            if let failed, let f = failed.failure { o.append(("failure", f)) }
            return .object(o)
        }
    }

    func mergeResults() throws {
        let campaigns: [JSON]
        do {
            campaigns = try Self.merged(try files.flatMap { try Self.shardResults(path: $0) })
        } catch let e as MergeError {
            errLine("hmm explore --merge: \(e)")
            throw ExitCode(2)
        }
        var worst: Int32 = 0
        for c in campaigns {
            let result = c["result"]?.stringValue ?? "clean"
            worst = max(worst, exitCode(FailureKind(rawValue: result)))
            guard format == .text else { continue }
            let file = c["file"]?.stringValue ?? "?"
            let n = c["executions"]?.intValue ?? 0
            if let stopped = c["incomplete"]?.arrayValue?.compactMap(\.stringValue), !stopped.isEmpty {
                out("\(file): shards \(stopped.joined(separator: ", ")) stopped at their time budget: seeds they did not reach are not covered")
            }
            if let f = c["failure"] {
                out("\(file): \(result) at seed \(f["seed"].map { $0.intValue.map(String.init) ?? $0.stringValue ?? "?" } ?? "?") (merged from \(c["shards"]?.intValue ?? 0) shards, \(n) executions)")
                out(f["message"]?.stringValue ?? "")
                out("schedule: \(f["schedule"]?.stringValue ?? "")")
                out("replay: \(f["replay"]?.stringValue ?? "")")
            } else {
                out("\(file): nothing found in \(n) executions (merged from \(c["shards"]?.intValue ?? 0) shards, \(c["steps"]?.intValue ?? 0) steps, \(c["distinct"]?.intValue ?? 0) distinct)")
            }
        }
        if format == .json { out(JSON.object([("files", .array(campaigns))]).text()) }
        if worst != 0 { throw ExitCode(worst) }
    }
}
