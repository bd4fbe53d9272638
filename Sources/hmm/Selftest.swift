import ArgumentParser
import Conformance

/// `hmm selftest`: the kernel's HMM selftests against the model.
struct Selftest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the kernel HMM selftests (tools/testing/selftests/mm/hmm-tests.c) against swift-hmm.",
        discussion: """
            Prints TAP version 14 (plan, 'ok N - name', '# SKIP reason', a YAML block with \
            message, expected and got under a failure, the summary 'N passed, N failed, N skipped' \
            as a comment), or with --format json one JSON document. Exit status 0 only if \
            nothing failed. hugetlb, anonymous THP and device THP (MIGRATE_VMA_SELECT_COMPOUND) are \
            modelled: every case runs. \
            benchmark_thp_migration prints its table (TAP comments; standard error with --format json).
            """)

    enum VariantChoice: String, ExpressibleByArgument, CaseIterable {
        case `private`, coherent, all
    }

    @Option(help: "Which fixture variants to run: private (devices 0/1), coherent (devices 2/3) or all.")
    var variant: VariantChoice = .all

    @Option(help: "Run only tests whose full name contains this text (e.g. anon_read, hmm_device_coherent).")
    var filter: String?

    @Option(help: "Output format: tap or json.")
    var format: SelftestRunner.Format = .tap

    @Flag(help: "Check lock order and locking rules while running (lockdep); any report fails the run.")
    var lockdep = false

    @Option(help: "Largest size benchmark_thp_migration runs, in MiB (the kernel's list ends at 256).")
    var benchmarkMaxMib: Int = 256

    func run() throws {
        let variants: [Variant]
        switch variant {
        case .private: variants = [.devicePrivate]
        case .coherent: variants = [.deviceCoherent]
        case .all: variants = Variant.allCases
        }
        guard benchmarkMaxMib > 0 else { throw ValidationError("--benchmark-max-mib must be positive") }
        SelftestSuite.benchmarkMaxBytes = benchmarkMaxMib << 20
        let json = format == .json
        SelftestSuite.benchmarkReport = { rows in
            let text = (["benchmark_thp_migration: round trip (to device and back), mean of 5"] + rows).map { "# " + $0 }
            for line in text { if json { BenchRecord.printError(line) } else { out(line) } }
        }
        let runner = SelftestRunner(variants: variants, filter: filter, format: format)
        if runner.selected.isEmpty {
            throw ValidationError("--filter '\(filter ?? "")' matches no test")
        }
        let lockdepReports = LockdepSession(on: lockdep)
        let results = runner.run { out($0) }
        if format == .json {
            let count = { (o: SelftestRunner.Outcome) in results.filter { $0.outcome == o }.count }
            out(JSON.object([
                ("format", .string("hmm-selftest")), ("version", .int(1)),
                ("tests", .array(results.enumerated().map { i, r in
                    .object([("number", .int(i + 1)), ("name", .string(r.name)), ("result", .string(r.outcome.rawValue)),
                             ("seconds", .double((r.seconds * 1000).rounded() / 1000)), ("message", r.message.map { .string($0) } ?? .null)])
                })),
                ("summary", .object([("passed", .int(count(.pass))), ("failed", .int(count(.fail))), ("skipped", .int(count(.skip)))])),
            ]).text())
        }
        if lockdepReports.finish() > 0 || results.contains(where: { $0.outcome == .fail }) { throw ExitCode(1) }
    }
}

extension SelftestRunner.Format: ExpressibleByArgument {}

#if canImport(Glibc)
import Glibc
#endif
