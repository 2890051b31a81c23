package bench

// MedianOf is each figure's median over the rounds (medianResult).
var MedianOf = medianResult
