import XCTest
@testable import MMSync

/// A test case that runs with lockdep on and a clean order graph, collecting its reports
/// instead of printing them, and restores lockdep as it found it.
class LockdepTestCase: XCTestCase {
    var reports: [Lockdep.Report] = []
    let reportsLock = NSLock()
    var savedHandler: ((Lockdep.Report) -> Void)!
    var wasEnabled = false

    override func setUp() {
        wasEnabled = Lockdep.enabled
        savedHandler = Lockdep.onReport
        reports = []
        Lockdep.onReport = { [unowned self] r in self.reportsLock.lock(); self.reports.append(r); self.reportsLock.unlock() }
        Lockdep.enable()
    }
    override func tearDown() {
        Lockdep.enable()   // a clean graph for the tests after this one
        Lockdep.enabled = wasEnabled
        Lockdep.onReport = savedHandler
    }
}
