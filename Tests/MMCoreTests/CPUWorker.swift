@testable import MMCore
import MMSync

/// A CPU thread that runs jobs handed to it one at a time, so a test can issue accesses from
/// several real threads in a sequence it controls.
final class CPUWorker {
    let cpu: CPU
    private let lock = Lock("worker")
    private let wake = WaitQueue()
    private var job: ((CPU) -> Void)? = nil
    private var quit = false
    private var thread: ModelThread?

    init(_ process: Process, name: String) {
        cpu = process.makeCPU()
        let cpu = self.cpu, lock = self.lock, wake = self.wake
        thread = ModelThread.spawn(name: name) { [self] in
            while true {
                var j: ((CPU) -> Void)? = nil
                var quit = false
                wake.wait { lock.withLock { j = self.job; quit = self.quit }; return j != nil || quit }
                guard let work = j else { break } // no job: asked to quit
                work(cpu)
                lock.withLock { self.job = nil }
                wake.wakeAll()
            }
            cpu.detach()
        }
    }

    /// Runs `body` on the worker's thread and returns its result.
    func run<T>(_ body: @escaping (CPU) -> T) -> T {
        var result: T? = nil
        lock.withLock { job = { result = body($0) } }
        wake.wakeAll()
        wake.wait { lock.withLock { job == nil } }
        return result!
    }

    func stop() {
        lock.withLock { quit = true }
        wake.wakeAll()
        thread?.join()
        thread = nil
    }
}
