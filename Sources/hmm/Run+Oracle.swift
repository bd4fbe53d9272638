import ArgumentParser
import KernelOracle
import Scenario

#if canImport(Glibc)
import Glibc
#endif

/// `hmm run --oracle FILE…`: each script on swift-hmm and on Linux 7.2 (the kernel oracle's VM,
/// `hmm-oracle-runner`), compared command by command (docs/kernel-oracle.md).
extension Run {
    func runWithOracle() throws {
        // The kernel's side first: one VM for every script.
        let kernelText: String
        // The scripts and what they include, copied for the VM below their common directory.
        let (copies, vmNames) = try Self.filesForTheVM(files)
        if let file = oracleOutput {
            guard let text = BenchRecord.readFile(file) else { throw ValidationError("--oracle-output: cannot read \(file)") }
            kernelText = text
        } else {
            // `; true`: a script whose runner fails is reported from its output, not by the
            // exit status of the last one.
            let script = vmNames.map { "echo '@@SCRIPT \($0)'; hmm-oracle-runner '\($0)'" }.joined(separator: "; ") + "; true"
            kernelText = try KernelOracleRun.output(["run", "--timeout", "3600"] + (oracleCoherent ? ["--coherent"] : [])
                                                    + copies.flatMap { ["--file", $0] } + ["--", script],
                                                    command: "hmm run --oracle", save: saveOracleOutput, keepPartial: true)
        }
        try KernelOracleRun.keep(kernelText, in: saveOracleOutput)
        let kernel = ScenarioComparison.parseRunner(kernelText)
        var results: [ScenarioComparison.Result] = []
        for (file, name) in zip(files, vmNames) {
            var options = ScenarioInterpreter.Options()
            try limits.apply(&options)
            options.trace = true
            options.maxSteps = max(1, maxSteps)
            let collected = TraceCollector()
            options.output = { collected.add($0) }
            let outcome = ScenarioInterpreter(options: options).run(path: file)
            var failure: String? = nil
            switch outcome {
            case .passed, .skipped: break
            case .failed(let m), .malformed(let m): failure = m
            }
            // A kept run may name the script by a longer or shorter path than this set of files
            // gives it: then the one key that ends the same way.
            let k = kernel[name] ?? kernel.first { key, _ in key.hasSuffix("/" + name) || name.hasSuffix("/" + key) }?.value
            let r = ScenarioComparison.compare(file: file, model: collected.lines.compactMap(ScenarioComparison.traceLine),
                                               modelFailure: failure, kernel: k)
            results.append(r)
            out("\(file): \(r.verdict.rawValue) (\(r.compared) commands compared)\(r.note.map { ": " + $0 } ?? "")")
        }
        let count = { (v: ScenarioComparison.Verdict) in results.filter { $0.verdict == v }.count }
        out("# \(count(.same)) same, \(count(.different)) different, \(count(.partial)) compared in part, \(count(.skipped)) skipped; "
            + "\(results.map(\.compared).reduce(0, +)) commands compared")
        if count(.different) > 0 { throw ExitCode(1) }
    }

    /// The scripts and the files they include, as `--file HOST:GUEST` copies below their common
    /// directory, and each script's path there.
    static func filesForTheVM(_ scripts: [String]) throws -> (copies: [String], names: [String]) {
        var all: [String] = []
        var scriptPaths: [String] = []
        func visit(_ path: String, depth: Int) throws {
            guard depth < 16 else { throw ValidationError("\(path): includes nested too deep") }
            guard let real = realPath(path) else { throw ValidationError("\(path): no such file") }
            if all.contains(real) { return }
            all.append(real)
            guard let text = BenchRecord.readFile(real) else { throw ValidationError("\(path): cannot read") }
            let dir = String(real[..<(real.lastIndex(of: "/") ?? real.startIndex)])
            for line in text.split(separator: "\n") {
                let t = line.drop { $0 == " " || $0 == "\t" }
                guard t.hasPrefix("include "), let q1 = t.firstIndex(of: "\"") else { continue }
                let rest = t[t.index(after: q1)...]
                guard let q2 = rest.firstIndex(of: "\"") else { continue }
                let inc = String(rest[..<q2])
                try visit(inc.hasPrefix("/") ? inc : dir + "/" + inc, depth: depth + 1)
            }
        }
        for s in scripts {
            try visit(s, depth: 0)
            scriptPaths.append(realPath(s) ?? s)
        }
        // The common directory of every file.
        var common = all.first.map { String($0[..<($0.lastIndex(of: "/") ?? $0.startIndex)]) } ?? "/"
        for p in all {
            while !common.isEmpty && !p.hasPrefix(common + "/") { common = String(common[..<(common.lastIndex(of: "/") ?? common.startIndex)]) }
        }
        let rel = { (p: String) in String(p.dropFirst(common.count + 1)) }
        return (all.map { "\($0):\(rel($0))" }, scriptPaths.map(rel))
    }

    static func realPath(_ p: String) -> String? {
        guard let r = realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }
}

/// Trace lines of one script (the interpreter's threads may emit concurrently).
final class TraceCollector: @unchecked Sendable {
    private let lock = NSLockLite()
    private(set) var lines: [String] = []
    func add(_ l: String) { lock.withLock { lines.append(l) } }
}
