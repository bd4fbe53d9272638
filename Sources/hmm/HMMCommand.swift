import ArgumentParser
import MMCore

@main
struct HMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hmm",
        abstract: "swift-hmm: Linux's Heterogeneous Memory Management as a runnable user-space model.",
        discussion: """
            swift-hmm runs a faithful model of the Linux core memory manager (frames, 4-level page \
            tables, VMAs, faults, COW, fork, rmap, migration, MMU notifiers) with real threads.
            """,
        subcommands: [Selftest.self, Run.self, Check.self, Inspect.self, Explore.self, Bench.self, Demo.self, SVM.self],
        defaultSubcommand: nil)
}
