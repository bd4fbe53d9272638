import ArgumentParser
import Conformance

/// `hmm selftest`: the kernel's HMM selftests against the model.
struct Selftest: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the kernel HMM selftests (tools/testing/selftests/mm/hmm-tests.c) against swift-hmm.",
        discussion: """
            Prints kselftest/TAP lines (ok N name, not ok N name, # SKIP reason) and a last line \
            'N passed, N failed, N skipped'. Exit status 0 only if nothing failed. Tests that \
            need huge pages (THP, hugetlb) are skipped until the huge-page layer exists.
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

    func run() throws {
        let variants: [Variant]
        switch variant {
        case .private: variants = [.devicePrivate]
        case .coherent: variants = [.deviceCoherent]
        case .all: variants = Variant.allCases
        }
        let runner = SelftestRunner(variants: variants, filter: filter, format: format)
        if runner.selected.isEmpty {
            throw ValidationError("--filter '\(filter ?? "")' matches no test")
        }
        let results = runner.run { print($0); fflush(stdout) }
        if results.contains(where: { $0.outcome == .fail }) { throw ExitCode(1) }
    }
}

extension SelftestRunner.Format: ExpressibleByArgument {}

#if canImport(Glibc)
import Glibc
#endif
