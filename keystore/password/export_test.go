package password

// CheckVerifyCost exposes checkVerifyCost to the package's tests.
var CheckVerifyCost = checkVerifyCost
