import ArgumentParser
import Conformance
import KernelOracle

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

    @Option(help: "Largest size benchmark_thp_migration runs, in MiB (the kernel's list ends at 256; with --memory, a quarter of it at most by default).")
    var benchmarkMaxMib: Int?

    @Option(help: ArgumentHelp("RAM of each test's machine, in MiB (at least 8; default 512). Below what a test touches, pages are swapped out to --swap and reclaimed.", valueName: "MiB"))
    var memory: Int?

    @Option(help: ArgumentHelp("Swap of each test's machine, in MiB (default: none, or 1024 with --memory).", valueName: "MiB"))
    var swap: Int?

    @Flag(help: ArgumentHelp("Also run the kernel's own hmm-tests on Linux 7.2 under QEMU (tools/kernel-oracle/oracle.sh, prepared beforehand) and print both results side by side per case.",
                             discussion: "Exit status 1 when a case differs or swift-hmm fails one, 2 when the oracle cannot run."))
    var oracle = false

    @Option(help: ArgumentHelp("Compare with the kernel's results kept in this file (what 'oracle.sh selftests' printed, or --save-oracle-output saved) instead of booting the VM; repeat it for several files.", valueName: "file"))
    var oracleOutput: [String] = []

    @Option(help: ArgumentHelp("With --oracle: save what the kernel printed to this file.", valueName: "file"))
    var saveOracleOutput: String?

    @Flag(help: "With --oracle: run the coherent variant on the kernel too (test_hmm gets special-purpose memory carved out of the VM's RAM; see docs/kernel-oracle.md for how far to trust it).")
    var oracleCoherent = false

    func run() throws {
        let variants: [Variant]
        switch variant {
        case .private: variants = [.devicePrivate]
        case .coherent: variants = [.deviceCoherent]
        case .all: variants = Variant.allCases
        }
        // A buffer that does not fit in RAM is partly swapped out, and migrate_vma leaves swapped
        // pages where they are: MIGRATE_TO_DEV then fails with ENOENT, as on Linux 7.2 (whose
        // own run in a 192 MiB VM with zram is killed by the OOM killer at 256 MiB: the device
        // memory behind test_hmm's pages is RAM that cannot be swapped).
        let maxMib = benchmarkMaxMib ?? min(256, memory.map { max(1, $0 / 4) } ?? 256)
        guard maxMib > 0 else { throw ValidationError("--benchmark-max-mib must be positive") }
        SelftestSuite.benchmarkMaxBytes = maxMib << 20
        if let memory {
            guard memory >= 8, memory <= 1 << 20 else { throw ValidationError("--memory must be between 8 and 1048576 MiB") }
            SelftestSuite.machineMemoryBytes = UInt64(memory) << 20
        }
        if let swap = swap ?? (memory != nil ? 1024 : nil) {
            guard swap >= 0, swap <= 1 << 20 else { throw ValidationError("--swap must be between 0 and 1048576 MiB") }
            SelftestSuite.machineSwapBytes = UInt64(swap) << 20
        }
        let json = format == .json || oracle || !oracleOutput.isEmpty  // the table goes to standard error then
        SelftestSuite.benchmarkReport = { rows in
            let text = (["benchmark_thp_migration: round trip (to device and back), mean of 5"] + rows).map { "# " + $0 }
            for line in text { if json { BenchRecord.printError(line) } else { out(line) } }
        }
        let withOracle = oracle || !oracleOutput.isEmpty
        if !withOracle && (oracleCoherent || saveOracleOutput != nil) {
            throw ValidationError("--oracle-coherent and --save-oracle-output need --oracle (or --oracle-output)")
        }
        if oracle && !oracleOutput.isEmpty { throw ValidationError("--oracle boots the kernel, --oracle-output reads a kept run: give one") }
        let runner = SelftestRunner(variants: variants, filter: filter, format: withOracle ? .json : format)
        if runner.selected.isEmpty {
            throw ValidationError("--filter '\(filter ?? "")' matches no test")
        }
        if withOracle { return try runWithOracle(runner, variants: variants) }
        let lockdepReports = LockdepSession(on: lockdep)
        let results = runner.run { out($0) }
        if memory != nil || swap != nil {
            let line = "# machine of each case: \(SelftestSuite.machineMemoryBytes >> 20) MiB RAM, \(SelftestSuite.machineSwapBytes >> 20) MiB swap; summed over the cases: "
                + SelftestSuite.reclaimTotals.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
            if format == .json { BenchRecord.printError(line) } else { out(line) }
        }
        if format == .json {
            let count = { (o: SelftestRunner.Outcome) in results.filter { $0.outcome == o }.count }
            out(JSON.object([
                ("format", .string("hmm-selftest")), ("version", .int(1)),
                ("tests", .array(results.enumerated().map { i, r in
                    .object([("number", .int(i + 1)), ("name", .string(r.name)), ("result", .string(r.outcome.rawValue)),
                             ("seconds", .double((r.seconds * 1000).rounded() / 1000)), ("message", r.message.map { .string($0) } ?? .null)])
                })),
                ("summary", .object([("passed", .int(count(.pass))), ("failed", .int(count(.fail))), ("skipped", .int(count(.skip))),
                                     ("expectedFailures", .int(count(.xfail)))])),
            ]).text())
        }
        if lockdepReports.finish() > 0 || results.contains(where: { $0.outcome == .fail }) { throw ExitCode(1) }
    }
}

extension SelftestRunner.Format: ExpressibleByArgument {}

#if canImport(Glibc)
import Glibc
#endif

extension Selftest {
    /// `--oracle`: the kernel's results (from the VM, or a recorded run) beside the model's.
    func runWithOracle(_ runner: SelftestRunner, variants: [Variant]) throws {
        let kernelText: String
        if !oracleOutput.isEmpty {
            var text = ""
            for file in oracleOutput {
                guard let t = BenchRecord.readFile(file) else { throw ValidationError("--oracle-output: cannot read \(file)") }
                text += t.hasSuffix("\n") || t.isEmpty ? t : t + "\n"
            }
            kernelText = text
        } else {
            var args = ["selftests"]
            if oracleCoherent && variants.contains(.deviceCoherent) { args.append("--coherent") }
            if let filter { args += ["--filter", filter] }
            kernelText = try KernelOracleRun.output(args, command: "hmm selftest --oracle", save: saveOracleOutput)
        }
        try KernelOracleRun.keep(kernelText, in: saveOracleOutput)
        let kernel: KernelSelftestRun
        do { kernel = try KernelSelftestRun.parse(kernelText) } catch {
            BenchRecord.printError("hmm selftest --oracle: \(error)")
            throw ExitCode(2)
        }
        let kernelVariants = Set(kernel.cases.map { String($0.name.split(separator: ".")[1]) })
        let lockdepReports = LockdepSession(on: lockdep)
        let results = runner.run { _ in }
        var known: [String: (SelftestComparison.Divergence?, String?)] = [:]
        for (t, v) in runner.selected {
            let d = t.divergence[v].flatMap { d in
                KernelSelftestRun.Outcome(rawValue: d.kernel).map { SelftestComparison.Divergence(id: d.id, kernel: $0, model: d.model) }
            }
            known[t.fullName(v)] = (d, t.expectedFailure[v]?.kernelFailure)
        }
        let model = results.map {
            SelftestComparison.ModelCase(name: $0.name, outcome: $0.outcome.rawValue, seconds: $0.seconds, message: $0.message,
                                         divergence: known[$0.name]?.0, kernelFailure: known[$0.name]?.1)
        }
        let comparison = SelftestComparison(kernel: kernel, model: model) { name in
            let variant = name.split(separator: ".").dropFirst().first.map(String.init) ?? ""
            if variant.hasSuffix("coherent") && !kernelVariants.contains(variant) {
                return "not run (the coherent devices need special-purpose memory: --oracle-coherent)"
            }
            return "no result in the kernel's output"
        }
        for note in kernel.notes { BenchRecord.printError("hmm selftest --oracle: the VM reported: \(note)") }
        if format == .json {
            out(JSON.object([
                ("format", .string("hmm-selftest-oracle")), ("version", .int(1)),
                ("kernel", kernel.kernelRelease.map { .string($0) } ?? .null),
                ("cases", .array(comparison.rows.map { r in
                    .object([("name", .string(r.name)),
                             ("kernel", r.kernel.map { .string($0.outcome.rawValue) } ?? .null),
                             ("kernelSeconds", r.kernel.map { .double($0.seconds) } ?? .null),
                             ("kernelDetail", r.kernel?.detail.map { .string($0) } ?? .null),
                             ("model", r.model.map { .string($0.outcome) } ?? .null),
                             ("modelSeconds", r.model.map { .double(($0.seconds * 1000).rounded() / 1000) } ?? .null),
                             ("verdict", .string(r.verdict.rawValue)), ("note", r.note.map { .string($0) } ?? .null)])
                })),
                ("summary", .object([("same", .int(comparison.count(.same))), ("different", .int(comparison.count(.different))),
                                     ("documented", .int(comparison.count(.documented))), ("notCompared", .int(comparison.count(.notCompared)))])),
            ]).text())
        } else {
            for line in comparison.text() { out(line) }
        }
        if lockdepReports.finish() > 0 || comparison.count(.different) > 0 { throw ExitCode(1) }
    }
}
