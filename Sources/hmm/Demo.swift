import ArgumentParser
import Devices
import MMCore
import MMSync

/// `hmm demo`: the showcase — workloads on the GPU-like SVM device under every policy, a
/// table and a report (`--core`: the short built-in run of the core mm instead).
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the SVM device showcase (workloads under every policy, a table, an HTML report and a Perfetto trace); --core runs the core-mm demo.",
        discussion: """
        The showcase runs each workload (default: stream and pingpong) on the GPU-like SVM \
        device under each placement policy, checks every word against a reference model, \
        prints the comparison table and writes REPORT-DIR/index.html (SVG plots: the policies \
        compared, each run's timeline and device-memory residency) and a Chrome trace-event \
        file (REPORT-DIR/trace.json, or --trace-out) that opens in ui.perfetto.dev. \
        With --core: two CPU threads, mmap, fork, COW, mprotect, munmap, and counters.
        """)

    @Flag(help: "Run the core-mm demo (two CPU threads, mmap, fork, COW, mprotect, munmap) instead of the SVM showcase.")
    var core = false

    @Option(name: .customLong("memory-mib"), help: "Machine memory in MiB (16...16384).")
    var memoryMiB: UInt64 = 256

    @Option(help: "Pages in the demo region (1...4096 with --core, default 256; 2...65536 for the showcase, default 2048).")
    var pages: Int?

    @Option(help: "Showcase workloads, comma-separated: \(SVMWorkloadKind.allCases.map(\.rawValue).joined(separator: ", ")), or all.")
    var workloads: String = "stream,pingpong"

    @Option(name: .customLong("device-mib"), help: "Showcase device memory in MiB, an even number (2...1024).")
    var deviceMiB: UInt64 = 64

    @Option(name: .customLong("report-dir"), help: "Where the showcase writes index.html and trace.json.")
    var reportDir: String = "hmm-report"

    @Option(name: .customLong("trace-out"), help: "Write the Chrome trace-event JSON here instead of REPORT-DIR/trace.json.")
    var traceOut: String?

    var kinds: [SVMWorkloadKind] {
        workloads == "all" ? SVMWorkloadKind.allCases : workloads.split(separator: ",").compactMap { SVMWorkloadKind(rawValue: String($0)) }
    }

    func validate() throws {
        guard (16...16384).contains(memoryMiB) else { throw ValidationError("--memory-mib must be between 16 and 16384") }
        if core {
            guard (1...4096).contains(pages ?? 256) else { throw ValidationError("--pages must be between 1 and 4096") }
        } else {
            guard (2...65536).contains(pages ?? 2048) else { throw ValidationError("--pages must be between 2 and 65536") }
            guard (2...1024).contains(deviceMiB), deviceMiB % 2 == 0 else { throw ValidationError("--device-mib must be an even number between 2 and 1024") }
            let names = workloads.split(separator: ",")
            guard workloads == "all" || (!names.isEmpty && kinds.count == names.count) else {
                throw ValidationError("--workloads: each must be one of \(SVMWorkloadKind.allCases.map(\.rawValue).joined(separator: ", ")), or all")
            }
            guard !reportDir.isEmpty else { throw ValidationError("--report-dir must not be empty") }
        }
    }

    func run() throws {
        if !core {
            let showcase = SVMShowcase(workloads: kinds, pages: pages ?? 2048, deviceMiB: deviceMiB, machineMiB: memoryMiB,
                                       reportDir: reportDir, traceOut: traceOut)
            do {
                if try !showcase.run() { throw ExitCode(1) }
            } catch let e as Errno {
                throw DemoError(description: "the showcase failed with \(e.name) (\(e.message)): try a larger --memory-mib")
            }
            return
        }
        let pages = self.pages ?? 256
        do {
            let report = try DemoRun(memoryMiB: memoryMiB, pages: pages).run()
            print(report, terminator: "")
        } catch let e as Errno {
            throw DemoError(description: "the demo failed with \(e.name) (\(e.message)): \(memoryMiB) MiB of RAM may be too small for \(pages) pages and their page tables; try a larger --memory-mib")
        } catch let f as AccessFault {
            throw DemoError(description: "the demo's CPU access failed: \(f); try a larger --memory-mib")
        }
    }
}

/// A failure of the demo run itself (no usage text: the arguments were fine).
struct DemoError: Error, CustomStringConvertible { let description: String }

/// The demo itself, separate from argument parsing so that it can also be tested.
struct DemoRun {
    let memoryMiB: UInt64
    let pages: Int

    func run() throws -> String {
        var out = ""
        func say(_ s: String) { out += s + "\n" }
        let machine = try Machine(memoryBytes: memoryMiB << 20)
        let startUsed = machine.usedFrames
        let parent = try Process(machine: machine)
        let size = UInt64(pages) * pageSize
        let base = try parent.mmap(length: size, prot: .readWrite, flags: [.private, .anonymous])
        say("pid \(parent.pid): mmap \(pages) pages private anonymous at 0x\(String(base, radix: 16))")

        // Two CPU threads fill the two halves at the same time.
        let half = UInt64(pages / 2)
        let threads = (0..<2).map { t in
            parent.spawnThread(name: "cpu\(t)") { cpu in
                let first = t == 0 ? 0 : half, last = t == 0 ? half : UInt64(pages)
                cpu.run { cpu in
                    for pg in first..<last {
                        for w in stride(from: 0, to: pageSize, by: 512) {
                            try? cpu.store(base + pg * pageSize + w, UInt64(pg << 32 | w))
                        }
                    }
                }
            }
        }
        threads.forEach { $0.join() }
        say("2 CPU threads wrote every page: \(machine.stats[.faultAnonNewPage]) anonymous write faults, \(machine.usedFrames - startUsed) frames in use")

        let child = try parent.fork()
        say("fork: child pid \(child.pid) shares \(pages) pages copy-on-write")
        let ccpu = child.makeCPU()
        try ccpu.store(base, UInt64(0xC0FFEE))
        let pcpu = parent.makeCPU()
        let parentValue: UInt64 = try pcpu.load(base)
        let childValue: UInt64 = try ccpu.load(base)
        say("child wrote page 0: child reads 0x\(String(childValue, radix: 16)), parent still reads 0x\(String(parentValue, radix: 16)) (COW copies: \(machine.stats[.faultCOWCopy]))")

        try parent.mprotect(base, length: pageSize, prot: .read)
        do { try pcpu.store(base, UInt64(1)); say("unexpected: store to a read-only page succeeded") }
        catch { say("mprotect(PROT_READ) page 0, then store: \(error)") }

        try parent.munmap(base + pageSize, length: pageSize)
        do { let _: UInt64 = try pcpu.load(base + pageSize) } catch { say("munmap page 1, then load: \(error)") }
        say("parent VMAs after mprotect+munmap: \(parent.mm.vmaCount)")

        ccpu.detach(); pcpu.detach()
        child.exit()
        parent.exit()
        let problems = machine.checkInvariants()
        say("both processes exited; invariants: \(problems.isEmpty ? "hold" : problems.joined(separator: "; "))")
        say("")
        say("counters:")
        for (name, value) in machine.stats.snapshot() where value != 0 { say("  \(name): \(value)") }
        return out
    }
}
