import ArgumentParser
import Scenario

/// `hmm run FILE…`: runs scenario scripts.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run scenario scripts (see docs/scenario-language.md).",
        discussion: """
            Exit status: 0 when every expectation of every script holds (skipped scripts count as \
            passing), 1 when an expectation fails (printed as file:line: expected …, got …), \
            2 when a script is malformed (printed as file:line:column: what was expected there).
            """)

    @Argument(help: "Scenario files (.hmm).")
    var files: [String]

    @Flag(help: "Print every operation with its result.")
    var trace = false

    @Flag(help: "Print the machine's event counters after each script.")
    var stats = false

    @Flag(help: "Print only failures and the summary.")
    var quiet = false

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("expected at least one scenario file") }
    }

    func run() throws {
        var worst: Int32 = 0
        var passed = 0, failed = 0, skipped = 0
        for (i, file) in files.enumerated() {
            var options = ScenarioInterpreter.Options()
            options.trace = trace
            options.stats = stats
            let outcome = ScenarioInterpreter(options: options).run(path: file)
            switch outcome {
            case .passed: passed += 1; if !quiet { print("ok \(i + 1) \(file)") }
            case .skipped(let r): skipped += 1; if !quiet { print("ok \(i + 1) \(file) # SKIP \(r)") }
            case .failed(let m): failed += 1; print("not ok \(i + 1) \(file)"); printError(m)
            case .malformed(let m): failed += 1; print("not ok \(i + 1) \(file)"); printError(m)
            }
            worst = max(worst, outcome.exitCode)
        }
        print("\(passed) passed, \(failed) failed, \(skipped) skipped")
        if worst != 0 { throw ExitCode(worst) }
    }

    func printError(_ m: String) {
        var stderr = StandardError()
        print(m, to: &stderr)
    }
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) { fputs(string, Glibc.stderr) }
}

#if canImport(Glibc)
import Glibc
#endif
